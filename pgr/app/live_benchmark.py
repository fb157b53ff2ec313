"""Live cameras on this machine, embedded (BENCHMARKS.md, "Live").

    pgr bench live [--config configs/four_cameras.yaml] [--seconds 60] [--imgsz N] [--detect-batch N]
                   [--every-crop] [--out FILE.json]
    pgr bench crops [--config configs/four_cameras.yaml] [--seconds 60] [--out FILE.json]

Runs the config's cameras (file sources played in real time, as live cameras) through the embedded pipeline
for `--seconds` of video into a fresh index, then reports frames in (sampled from the sources) against
frames detected and frames dropped because the detector was behind, crops, features and rows indexed, and
the frame-to-searchable latency of every indexed row (from the frame's capture, `read_at`, to its row
being written, `indexed_at`): median, p95, max. The load average before and after is part of the result:
on a shared machine the figures depend on it.

`crops` runs ingest alone over each distinct source of the config, not in real time, with every crop and
with representatives: crops per second of video, which do not depend on the load, and the CPU milliseconds
ingest spends per sampled frame (decoding every source frame, detection, tracking, crops).
"""

from __future__ import annotations

import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from pgr.metrics import PipelineMetrics, counter_total
from pgr.settings import Settings, load_settings


def _native_fps(source: str) -> float:
    cap = cv2.VideoCapture(source)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return fps if fps and fps > 0 else 25.0


def live_settings(
    config: str | Path,
    folder: Path,
    seconds: float,
    imgsz: int | None = None,
    detect_batch: int | None = None,
    every_crop: bool = False,
) -> Settings:
    """The config's settings for a benchmark run: a fresh index under `folder`, every camera stopped after
    `seconds` of its video, and the ingest options given."""
    settings = load_settings(config)
    cameras = [
        c.model_copy(update={"max_frames": max(1, int(seconds * _native_fps(c.source)))})
        for c in settings.cameras
    ]
    ingest: dict = {}
    if imgsz is not None:
        ingest["imgsz"] = imgsz
    if detect_batch is not None:
        ingest["detect_batch"] = detect_batch
    if every_crop:
        ingest["representative_s"] = None
    matcher = {
        "index": "embedded",
        "milvus_uri": None,
        "index_dir": folder / "index",
        "thumbnails_dir": folder / "thumbnails",
        "features_dir": folder / "features",
        "identities": settings.matcher.identities.model_copy(update={"store": folder / "identities.sqlite"}),
    }
    return settings.model_copy(
        update={
            "cameras": cameras,
            "ingest": settings.ingest.model_copy(update=ingest),
            "matcher": settings.matcher.model_copy(update=matcher),
        }
    )


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far (every thread, OpenVINO's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"median": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {
        "median": round(float(np.median(values)), 3),
        "p95": round(float(np.percentile(values, 95)), 3),
        "max": round(float(values.max()), 3),
    }


def _by_camera(counter, cameras: list[str], **labels) -> dict[str, int]:
    return {c: int(counter.labels(c, *labels.values())._value.get()) for c in cameras}


def run_live(
    config: str | Path,
    seconds: float,
    imgsz: int | None = None,
    detect_batch: int | None = None,
    every_crop: bool = False,
) -> dict:
    """One live run; the figures as a dict (see the module's docstring)."""
    from matcher.open_index import open_index
    from pgr.app.benchmark import _machine, _stage_sums
    from pgr.app.pipeline import build_extractor, run_embedded

    with tempfile.TemporaryDirectory(prefix="pgr-live-") as tmp:
        settings = live_settings(config, Path(tmp), seconds, imgsz, detect_batch, every_crop)
        extractor = build_extractor(settings.reid, shared=True)
        metrics = PipelineMetrics()
        load_before = os.getloadavg()
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        run = run_embedded(settings, metrics, stop=threading.Event(), extractor=extractor)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        load_after = os.getloadavg()
        index = open_index(settings.matcher)
        rows = index.get(index.all_ids(limit=1_000_000))
        index.close()
    if run.errors:
        raise RuntimeError("; ".join(run.errors))
    cams = [c.id for c in settings.cameras]
    frames_in = int(counter_total(metrics.frames_read))
    detected = int(counter_total(metrics.frames_detected))
    behind = _by_camera(metrics.frames_dropped, cams, reason="behind")
    latency = np.array([r.indexed_at - r.read_at for r in rows if r.read_at > 0])
    sums = _stage_sums(metrics)
    ing = settings.ingest
    return {
        "machine": _machine(),
        "shared_machine_note": "2 cores shared with other jobs; see load_average",
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "cameras": {c.id: f"{Path(c.source).name} at {c.fps} fps, real time" for c in settings.cameras},
        "seconds_of_video": seconds,
        "wall_s": round(wall, 1),
        "detector": {
            "imgsz": ing.imgsz,
            "input": "square" if ing.square_input else "frame aspect",
            "detect_batch": ing.detect_batch,
            "mean_batch": round(detected / max(1, counter_total(metrics.detector_batches)), 2),
        },
        "representative_s": ing.representative_s,
        "reid_model": extractor.name,
        "frames_in": frames_in,
        "frames_detected": detected,
        "frames_dropped_behind": sum(behind.values()),
        "frames_dropped_behind_per_camera": behind,
        "cpu_s": round(cpu, 1),
        "cores_used": round(cpu / wall, 2),
        "cpu_ms_per_detected_frame": round(1000 * cpu / detected, 1) if detected else None,
        "frames_in_per_s": round(frames_in / wall, 2),
        "frames_detected_per_s": round(detected / wall, 2),
        "detections": int(counter_total(metrics.detections)),
        "crops_published": int(counter_total(metrics.crops_published)),
        "features_extracted": int(counter_total(metrics.features_extracted)),
        "rows_indexed": len(rows),
        "frame_to_searchable_s": percentiles(latency),
        "stage_seconds": {k: round(v, 2) for k, v in sums.items()},
    }


def print_live(result: dict) -> None:
    lat = result["frame_to_searchable_s"]
    det = result["detector"]
    print(
        f"machine: {result['machine']}; load average {result['load_average_before']} -> "
        f"{result['load_average_after']} (shared machine)"
    )
    print(
        f"{len(result['cameras'])} cameras, {result['seconds_of_video']} s of video in {result['wall_s']} s; "
        f"detector {det['imgsz']} ({det['input']}), batch <= {det['detect_batch']} "
        f"(mean {det['mean_batch']}); "
        f"representatives every {result['representative_s']} s"
    )
    print(
        f"frames in {result['frames_in']}, detected {result['frames_detected']}, dropped (behind) "
        f"{result['frames_dropped_behind']}; crops {result['crops_published']}, features "
        f"{result['features_extracted']}, rows {result['rows_indexed']}"
    )
    print(
        f"CPU {result['cpu_s']} s ({result['cores_used']} cores, "
        f"{result['cpu_ms_per_detected_frame']} ms per detected frame, every stage)"
    )
    print(f"frame to searchable: median {lat['median']} s, p95 {lat['p95']} s, max {lat['max']} s")
    print(
        "stage seconds (decode includes the real-time pacing): "
        + ", ".join(f"{k} {v}" for k, v in result["stage_seconds"].items())
    )


def run_crop_rates(config: str | Path, seconds: float) -> dict:
    """Crops per second of video for each distinct source of the config, every crop against representatives
    (`ingest.representative_s` of the config, 1 s if it has none): ingest alone, not in real time, so
    no frame is dropped and the figures do not depend on the machine's load."""
    from ingest.detector import build_detector
    from ingest.service import run_ingest
    from pgr.messages import decode_crop
    from pgr.transport import InProcessBus

    settings = load_settings(config)
    every_s = settings.ingest.representative_s or 1.0
    sources: dict[str, object] = {}
    for c in settings.cameras:
        sources.setdefault(c.source, c)
    out: dict = {
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "seconds_of_video": seconds,
        "representative_s": every_s,
        "detector": {"imgsz": settings.ingest.imgsz, "square": settings.ingest.square_input},
        "sources": {},
    }
    detector = build_detector(settings.ingest)
    for source, cam in sources.items():
        fps = _native_fps(source)
        cam = cam.model_copy(update={"realtime": False, "max_frames": max(1, int(seconds * fps))})
        cap = cv2.VideoCapture(source)
        detector.detect([cap.read()[1]])  # compiled for this input shape before the clock runs
        cap.release()
        row = {"sample_fps": cam.fps}
        for label, rep in (("every_crop", None), ("representatives", every_s)):
            cfg = settings.ingest.model_copy(update={"representative_s": rep})
            bus, metrics = InProcessBus(capacity=1_000_000), PipelineMetrics()
            cpu0 = _cpu_seconds()
            stop = threading.Event()
            published = run_ingest([cam], cfg, bus.producer(), "crops", metrics, stop, detector)[cam.id]
            cpu = _cpu_seconds() - cpu0
            frames = counter_total(metrics.frames_detected)
            row[f"{label}_per_s"] = round(published / seconds, 2)
            row[f"{label}_ingest_cpu_ms_per_frame"] = round(1000 * cpu / frames, 1) if frames else None
            tracks = {decode_crop(m.value).detection.track_id for m in bus.records("crops")}
            row[f"{label}_tracks"] = len(tracks)
        row["reduction"] = round(row["every_crop_per_s"] / max(row["representatives_per_s"], 1e-9), 2)
        out["sources"][Path(source).name] = row
    out["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return out
