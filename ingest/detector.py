"""Person detection and per-camera tracking with ultralytics YOLO."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgr.model_files import quiet_ultralytics, require_model_file

PERSON_CLASS = 0


@dataclass(frozen=True)
class TrackedPerson:
    """One person box in a frame: (x1, y1, x2, y2) in pixels, confidence, local track id (-1: untracked)."""

    box: tuple[float, float, float, float]
    score: float
    track_id: int


class PersonTracker:
    """YOLO person detector with ultralytics' tracker; one instance per camera keeps that camera's tracks.

    >>> tracker = PersonTracker(Path("yolo11n_int8_openvino_model"))  # doctest: +SKIP
    >>> tracker.update(frame)  # doctest: +SKIP
    [TrackedPerson(box=(12.0, 40.5, 60.2, 170.0), score=0.81, track_id=1)]
    """

    def __init__(self, weights: Path, tracker: str = "bytetrack.yaml", conf: float = 0.4, imgsz: int = 640):
        quiet_ultralytics()
        from ultralytics import YOLO

        path = require_model_file(weights, "person detector")
        self.model = YOLO(str(path), task="detect")
        self.tracker, self.conf, self.imgsz = tracker, conf, imgsz

    def update(self, image: np.ndarray) -> list[TrackedPerson]:
        """Detect persons in the next frame of this camera and assign track ids."""
        result = self.model.track(
            image,
            persist=True,
            classes=[PERSON_CLASS],
            conf=self.conf,
            imgsz=self.imgsz,
            tracker=self.tracker,
            verbose=False,
        )[0]
        return _persons(result)

    def detect(self, image: np.ndarray) -> list[TrackedPerson]:
        """Detect persons in an image unrelated to the previous ones (a still): no track ids (-1)."""
        result = self.model.predict(
            image, classes=[PERSON_CLASS], conf=self.conf, imgsz=self.imgsz, verbose=False
        )[0]
        return _persons(result)


def _persons(result) -> list[TrackedPerson]:
    """The person boxes of one ultralytics result."""
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return []
    xyxy = boxes.xyxy.cpu().numpy().astype(float)
    scores = boxes.conf.cpu().numpy().astype(float)
    ids = boxes.id.cpu().numpy().astype(int) if boxes.id is not None else np.full(len(xyxy), -1)
    return [
        TrackedPerson(box=tuple(float(v) for v in b), score=float(s), track_id=int(t))
        for b, s, t in zip(xyxy, scores, ids, strict=True)
    ]
