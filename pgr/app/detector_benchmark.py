"""The detector's input size against its person recall and its time (BENCHMARKS.md, "Live").

    pgr bench detector [--sizes 640 480 416 320] [--fps 2] [--videos A.mp4 B.mp4] [--out FILE.json]

Each video is sampled at `--fps`; every frame goes through the detector at every size, square (ultralytics'
letterbox of the fixed-size export, what ingest ran before) and keeping the frame's aspect. There are no
person annotations for the shared videos, so the reference is the square 640 run, the boxes that ingest
publishes (confidence >= conf, at least min_box_width x min_box_height pixels): recall is the share of
reference boxes that a run finds again (IoU >= 0.5, one-to-one, best scores first; also at IoU >= 0.3:
found but placed differently); `extra` is the share of a run's publishable boxes that match no reference
box. The time is the detector alone (preprocessing, inference, decoding, NMS), batch 1 and batch 4, on the
videos' frames in turn: wall milliseconds per frame, and the CPU milliseconds per frame of every thread
(what a frame costs, whatever else runs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np

from ingest.yolo_openvino import Boxes, OpenVinoYolo, input_shape
from pgr.app.live_benchmark import _cpu_seconds
from pgr.settings import IngestSettings

IOU_MATCH = 0.5
IOU_LOOSE = 0.3  # found, but placed differently


def sample_frames(video: Path, fps: float) -> list[np.ndarray]:
    """Every frame of `video` at about `fps` frames per second of video."""
    cap = cv2.VideoCapture(str(video))
    native = cap.get(cv2.CAP_PROP_FPS) or fps
    step, frames, index = max(native / fps, 1.0), [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if int(index / step) != int((index - 1) / step) or index == 0:
            frames.append(frame)
        index += 1
    cap.release()
    if not frames:
        raise ValueError(f"{video}: no frames could be read")
    return frames


def publishable(boxes: Boxes, cfg: IngestSettings) -> Boxes:
    """The boxes ingest would cut crops of (its score and size filters)."""
    w = boxes.xyxy[:, 2] - boxes.xyxy[:, 0]
    h = boxes.xyxy[:, 3] - boxes.xyxy[:, 1]
    return boxes[(boxes.conf >= cfg.conf) & (w >= cfg.min_box_width) & (h >= cfg.min_box_height)]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (n, 4) with every box of `b` (m, 4), xyxy."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def matched(reference: Boxes, found: Boxes, iou_min: float = IOU_MATCH) -> int:
    """Reference boxes found again: greedy one-to-one matching at IoU >= iou_min, best found score first."""
    if len(reference) == 0 or len(found) == 0:
        return 0
    iou = iou_matrix(found.xyxy, reference.xyxy)
    taken = np.zeros(len(reference), bool)
    hits = 0
    for i in np.argsort(-found.conf):
        row = np.where(taken, -1.0, iou[i])
        j = int(row.argmax())
        if row[j] >= iou_min:
            taken[j] = True
            hits += 1
    return hits


def _detect_all(detector: OpenVinoYolo, frames: list[np.ndarray], batch: int = 4) -> list[Boxes]:
    return [b for i in range(0, len(frames), batch) for b in detector.detect(frames[i : i + batch])]


def _time_per_frame(
    detector: OpenVinoYolo, frames: list[np.ndarray], batch: int, seconds: float
) -> tuple[float, float]:
    """Wall and CPU (every thread of this process) milliseconds per frame."""
    detector.detect(frames[:batch])  # compile and warm up
    done, t0, cpu0, i = 0, time.perf_counter(), _cpu_seconds(), 0
    while time.perf_counter() - t0 < seconds:
        chunk = [frames[(i + k) % len(frames)] for k in range(batch)]
        detector.detect(chunk)
        done, i = done + batch, i + batch
    return 1000 * (time.perf_counter() - t0) / done, 1000 * (_cpu_seconds() - cpu0) / done


def run_detector_sizes(
    cfg: IngestSettings, videos: list[Path], sizes: list[int], fps: float, time_s: float = 8.0
) -> dict:
    """Recall against square 640, extra boxes and milliseconds per frame for each size and letterbox."""
    load_before = [round(v, 2) for v in os.getloadavg()]
    clips = {v.name: sample_frames(v, fps) for v in videos}
    mixed = [f for group in zip(*clips.values(), strict=False) for f in group]  # videos in turn
    reference_detector = OpenVinoYolo(cfg.detector_weights, 640, cfg.conf, square=True)
    reference = {
        name: [publishable(b, cfg) for b in _detect_all(reference_detector, frames)]
        for name, frames in clips.items()
    }
    rows = []
    for square in (True, False):
        for size in sizes:
            det = OpenVinoYolo(cfg.detector_weights, size, cfg.conf, square=square)
            row: dict = {"imgsz": size, "input": "square" if square else "frame aspect", "videos": {}}
            for name, frames in clips.items():
                found = [publishable(b, cfg) for b in _detect_all(det, frames)]
                ref_n = sum(len(r) for r in reference[name])
                pairs = list(zip(reference[name], found, strict=True))
                hits = sum(matched(r, f) for r, f in pairs)
                loose = sum(matched(r, f, IOU_LOOSE) for r, f in pairs)
                found_n = sum(len(f) for f in found)
                shape = input_shape(*frames[0].shape[:2], size, square)
                row["videos"][name] = {
                    "input": f"{shape[1]}x{shape[0]}",
                    "reference_boxes": ref_n,
                    "boxes": found_n,
                    "recall": round(hits / ref_n, 4) if ref_n else None,
                    "recall_iou_0.3": round(loose / ref_n, 4) if ref_n else None,
                    "extra": round((found_n - hits) / found_n, 4) if found_n else 0.0,
                }
            wall1, cpu1 = _time_per_frame(det, mixed, 1, time_s)
            wall4, cpu4 = _time_per_frame(det, mixed, 4, time_s)
            row.update(
                ms_per_frame_batch1=round(wall1, 1),
                ms_per_frame_batch4=round(wall4, 1),
                cpu_ms_per_frame_batch1=round(cpu1, 1),
                cpu_ms_per_frame_batch4=round(cpu4, 1),
            )
            rows.append(row)
            print(_line(row), flush=True)
    return {
        "load_average_before": load_before,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "reference": "square 640, publishable boxes (no annotations for these videos)",
        "frames": {name: len(f) for name, f in clips.items()},
        "sample_fps": fps,
        "rows": rows,
    }


def _line(row: dict) -> str:
    per_video = "  ".join(
        f"{name[:12]} {v['input']} recall {v['recall']} extra {v['extra']}"
        for name, v in row["videos"].items()
    )
    return (
        f"{row['input']:>12} {row['imgsz']:4d}  {per_video}  "
        f"{row['ms_per_frame_batch1']} ms/frame (batch 1), {row['ms_per_frame_batch4']} (batch 4); CPU "
        f"{row['cpu_ms_per_frame_batch1']}, {row['cpu_ms_per_frame_batch4']} ms/frame"
    )
