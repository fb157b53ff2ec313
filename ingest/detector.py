"""Person detection: the configured YOLO model behind one `detect(frames) -> boxes` call.

An OpenVINO export (the default) runs through `ingest.yolo_openvino` at the configured input size, several
cameras' frames in one inference; any other format ultralytics loads (.pt, ONNX, ...) runs through its
predictor. Tracking is separate (`ingest.tracking`), so both give the same tracks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ingest.yolo_openvino import Boxes, OpenVinoYolo, is_openvino_ir
from pgr.model_files import quiet_ultralytics, require_model_file
from pgr.settings import IngestSettings

PERSON_CLASS = 0


class PersonDetector(Protocol):
    """What ingest needs from a detector."""

    def detect(self, images: list[np.ndarray]) -> list[Boxes]:
        """Person boxes for each BGR frame."""
        ...


class UltralyticsDetector:
    """A YOLO model in a format ultralytics loads, through its predictor (a batch as one call)."""

    def __init__(self, weights: Path, imgsz: int = 640, conf: float = 0.4) -> None:
        quiet_ultralytics()
        from ultralytics import YOLO

        self.model = YOLO(str(weights), task="detect")
        self.imgsz, self.conf = imgsz, conf

    def detect(self, images: list[np.ndarray]) -> list[Boxes]:
        if not images:
            return []
        results = self.model.predict(
            images, classes=[PERSON_CLASS], conf=self.conf, imgsz=self.imgsz, verbose=False
        )
        out = []
        for r in results:
            b = r.boxes
            out.append(Boxes.empty() if b is None else Boxes(b.xyxy.cpu().numpy(), b.conf.cpu().numpy()))
        return out


def build_detector(cfg: IngestSettings) -> PersonDetector:
    """The detector of `ingest.detector_weights` at `ingest.imgsz`."""
    path = require_model_file(cfg.detector_weights, "person detector")
    if is_openvino_ir(path):
        return OpenVinoYolo(path, cfg.imgsz, cfg.conf, square=cfg.square_input, threads=cfg.detector_threads)
    return UltralyticsDetector(path, cfg.imgsz, cfg.conf)
