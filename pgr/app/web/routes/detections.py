"""Detections: one's record, crop and full frame (box drawn); export of a confirmed set; erasure (admin).

The frame is re-read from the file `pgr index` indexed (its path is in indexed_files.json, the detection
id names the file's tag and the frame): nothing beyond the crop is stored, and a frame whose file was
moved or deleted, or a detection of a live camera, has no frame (404 saying so).
"""

from __future__ import annotations

import csv
import io
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Annotated

import cv2
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from matcher.detection_files import safe_name
from matcher.erasure import erase_detections
from matcher.index import IndexedDetection
from pgr.app.indexing import IndexedFile, stills_in
from pgr.app.web.auth import AdminUser, CurrentUser
from pgr.app.web.schemas import DetectionOut, Erased, Erasure, IdList
from pgr.images import read_image

router = APIRouter(tags=["detections"])
DetectionId = Annotated[str, PathParam(max_length=200, pattern=r"^[A-Za-z0-9_.:@+\-]+$")]
JPEG = {200: {"content": {"image/jpeg": {}}}}


def _one(request: Request, det_id: str) -> IndexedDetection:
    state = request.app.state.pgr
    with state.lock:
        found = state.index.get([det_id])
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no detection {det_id!r} in the index")
    return found[0]


@router.get("/detections/{det_id}", response_model=DetectionOut)
def detection(request: Request, det_id: DetectionId, user: CurrentUser) -> DetectionOut:
    """One detection's record."""
    return DetectionOut.of(_one(request, det_id))


@router.get("/detections/{det_id}/thumbnail", response_class=FileResponse, responses=JPEG)
def thumbnail(request: Request, det_id: DetectionId, user: CurrentUser) -> FileResponse:
    """The person crop."""
    d = _one(request, det_id)
    path = request.app.state.pgr.thumbnails.path_for(d.camera_id, d.detection_id)
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "this detection's thumbnail is missing")
    return FileResponse(path, media_type="image/jpeg")


def source_of(files: dict[str, IndexedFile], d: IndexedDetection) -> IndexedFile | None:
    """The indexed file a detection came from (its id is camera:tag:frame:who), or None."""
    parts = d.detection_id.split(":")
    return files.get(parts[1]) if len(parts) == 4 else None


def read_frame(source: IndexedFile, frame_index: int):
    """Frame `frame_index` of an indexed file (BGR), or None when it cannot be read."""
    path = Path(source.path)
    if source.stills:
        images = stills_in(path) if path.is_dir() else []
        return read_image(images[frame_index]) if frame_index < len(images) else None
    cap = cv2.VideoCapture(str(path))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, frame_index)
        ok, image = cap.read()
    finally:
        cap.release()
    return image if ok else None


@router.get("/detections/{det_id}/frame", response_class=Response, responses=JPEG)
def frame(request: Request, det_id: DetectionId, user: CurrentUser) -> Response:
    """The full frame with the person's box drawn, re-read from the indexed file (audited)."""
    state = request.app.state.pgr
    d = _one(request, det_id)
    source = source_of(state.indexed_files(), d)
    if source is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, "no frame: this detection is not from a file `pgr index` indexed"
        )
    image = read_frame(source, d.frame_index) if Path(source.path).exists() else None
    if image is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no frame: cannot read {source.path} any more")
    x1, y1, x2, y2 = (int(round(v)) for v in d.box)
    thick = max(2, image.shape[1] // 300)
    cv2.rectangle(image, (x1, y1), (x2, y2), (0, 0, 0), thick + 2)
    cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 80), thick)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 88])
    state.audit.append(user.name, "frame", detection_id=det_id, result_count=1)
    return Response(jpeg.tobytes(), media_type="image/jpeg")


@router.post("/export", response_class=Response, responses={200: {"content": {"application/zip": {}}}})
def export(request: Request, body: IdList, user: CurrentUser) -> Response:
    """A zip of the given detections (the confirmed results): results.csv and their thumbnails (audited)."""
    state = request.app.state.pgr
    ids = list(dict.fromkeys(body.detection_ids))
    with state.lock:
        found = {d.detection_id: d for d in state.index.get(ids)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no detection {missing[0]!r} in the index")
    table = io.StringIO()
    out = csv.writer(table)
    out.writerow(
        ["detection_id", "camera", "time", "time_iso", "frame", "track", "x1", "y1", "x2", "y2", "thumbnail"]
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for det_id in ids:
            d = found[det_id]
            name = f"thumbnails/{safe_name(det_id)}.jpg"
            thumb = state.thumbnails.path_for(d.camera_id, det_id)
            if thumb.is_file():
                z.write(thumb, name)
            iso = datetime.fromtimestamp(d.timestamp).astimezone().isoformat(timespec="seconds")
            out.writerow(
                [
                    _cell(det_id),
                    _cell(d.camera_id),
                    d.timestamp,
                    iso,
                    d.frame_index,
                    d.track_id,
                    *d.box,
                    name if thumb.is_file() else "",
                ]
            )
        z.writestr("results.csv", table.getvalue())
    state.audit.append(user.name, "export", query={"detection_ids": ids}, result_count=len(ids))
    return Response(
        buf.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="pgr-export.zip"'},
    )


def _cell(text: str) -> str:
    """A CSV text cell a spreadsheet will not run as a formula (ids may start with - + or @)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


@router.delete("/detections/{det_id}", response_model=Erased)
def erase_one(request: Request, det_id: DetectionId, user: AdminUser) -> Erased:
    """Erase one detection: its index row, thumbnail and features, for good: a replay of its record is
    dropped (admin; audited)."""
    return _erase(request, [det_id], user.name, "single detection")


@router.post("/erasure", response_model=Erased)
def erase_many(request: Request, body: Erasure, user: AdminUser) -> Erased:
    """Erase everything stored about one person: the detections given (e.g. the confirmed results of a
    search for them), with the request's reason (admin; audited)."""
    return _erase(request, list(dict.fromkeys(body.detection_ids)), user.name, body.reason)


def _erase(request: Request, ids: list[str], who: str, reason: str) -> Erased:
    state = request.app.state.pgr
    with state.lock:
        found = erase_detections(
            state.settings.matcher.identity_store_path, state.index, state.thumbnails, state.features, ids
        )
    gone = {d.detection_id for d in found}
    result = Erased(erased=[i for i in ids if i in gone], not_found=[i for i in ids if i not in gone])
    state.audit.append(
        who, "erasure", reason=reason, query={"detection_ids": ids}, result_count=len(result.erased)
    )
    return result


@router.post("/retention/apply")
def apply_retention(request: Request, user: AdminUser) -> dict:
    """Apply the retention period now rather than at the next scheduled run (admin; audited)."""
    return {"deleted": request.app.state.pgr.purge(user.name)}
