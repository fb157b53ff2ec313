"""The system's status: what is indexed, per camera."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Request

from pgr.app.web.auth import CurrentUser
from pgr.app.web.schemas import CameraStatus, Status

router = APIRouter(tags=["status"])


@router.get("/status", response_model=Status)
def system_status(request: Request, user: CurrentUser) -> Status:
    """Detections in the index, per known camera (the config's and those `pgr index` fed), the model and
    the retention. Whether live cameras are up is the pipeline's `pgr_camera_up` metric, not this server's."""
    state = request.app.state.pgr
    files = Counter(f.camera for f in state.indexed_files().values())
    cameras = state.cameras()
    retention = state.retention()
    with state.lock:
        total = state.index.count()
        counts = state.index.count_by_camera(cameras)
    return Status(
        detections=total,
        cameras=[
            CameraStatus(
                id=c,
                detections=counts[c],
                files=files[c],
                retention_days=retention.days_of(c),
            )
            for c in cameras
        ],
        model=state.extractor.name,
        retention_days=state.settings.serve.retention_days,
        last_purge=state.last_purge,
    )
