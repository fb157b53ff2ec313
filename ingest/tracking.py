"""Per-camera tracking: ultralytics' trackers (ByteTrack by default) over the boxes of our detector.

>>> tracker = CameraTracker("bytetrack.yaml")  # doctest: +SKIP
>>> tracker.update(boxes, frame)  # doctest: +SKIP
[TrackedPerson(box=(12.0, 40.5, 60.2, 170.0), score=0.81, track_id=1)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.yolo_openvino import Boxes
from pgr.model_files import quiet_ultralytics


@dataclass(frozen=True)
class TrackedPerson:
    """One person box in a frame: (x1, y1, x2, y2) in pixels, confidence, local track id (-1: untracked)."""

    box: tuple[float, float, float, float]
    score: float
    track_id: int


class CameraTracker:
    """One camera's tracks. As ultralytics' `track()` does, a frame reports only the boxes of confirmed
    tracks, and track ids start at 1."""

    def __init__(self, config: str = "bytetrack.yaml") -> None:
        quiet_ultralytics()
        from ultralytics.trackers.track import TRACKER_MAP
        from ultralytics.utils import YAML, IterableSimpleNamespace
        from ultralytics.utils.checks import check_yaml

        cfg = IterableSimpleNamespace(**YAML.load(check_yaml(config)))
        if cfg.tracker_type not in ("bytetrack", "botsort") or getattr(cfg, "with_reid", False):
            raise ValueError(f"tracker {config}: want bytetrack or botsort without re-ID")
        self.tracker = TRACKER_MAP[cfg.tracker_type](args=cfg)

    def update(self, boxes: Boxes, image: np.ndarray) -> list[TrackedPerson]:
        """The tracked persons of this camera's next frame, given its detected boxes."""
        tracks = self.tracker.update(boxes, image)
        return [
            TrackedPerson(box=tuple(float(v) for v in t[:4]), score=float(t[5]), track_id=int(t[4]))
            for t in tracks
        ]


def untracked(boxes: Boxes) -> list[TrackedPerson]:
    """The boxes of a still (no track): track id -1."""
    return [
        TrackedPerson(box=tuple(float(v) for v in b), score=float(s), track_id=-1)
        for b, s in zip(boxes.xyxy, boxes.conf, strict=True)
    ]
