"""The ingest service: one thread per camera reads frames, detects and tracks persons, publishes crops."""

from __future__ import annotations

import logging
import threading
import time

from ingest.crops import crop_jpeg, keep_detection, padded_box
from ingest.detector import PersonTracker
from ingest.sources import is_live, read_frames
from pgr.messages import CropRecord, Detection, detection_id, encode_crop, run_tag
from pgr.metrics import PipelineMetrics
from pgr.settings import CameraSettings, IngestSettings
from pgr.transport import Producer

log = logging.getLogger(__name__)


def run_camera(
    cam: CameraSettings,
    cfg: IngestSettings,
    producer: Producer,
    topic: str,
    metrics: PipelineMetrics,
    stop: threading.Event,
) -> int:
    """Process one camera until its source ends (or `stop`); returns the number of crops published."""
    tracker = PersonTracker(cfg.detector_weights, cfg.tracker, cfg.conf, cfg.imgsz)
    published = 0
    metrics.detections.labels(cam.id)
    metrics.crops_published.labels(cam.id)
    # live counters restart with every run; a file's ids carry its tag when it has one (`pgr index`)
    run = run_tag() if is_live(cam.source) else cam.id_tag
    frames = read_frames(cam, cfg.retry, metrics, stop)
    while True:
        t0 = time.perf_counter()
        frame = next(frames, None)
        if frame is None:
            break
        t1 = time.perf_counter()
        metrics.stage_latency.labels("decode").observe(t1 - t0)
        persons = tracker.update(frame.image) if cam.track else tracker.detect(frame.image)
        metrics.stage_latency.labels("detect").observe(time.perf_counter() - t1)
        metrics.detections.labels(cam.id).inc(len(persons))
        h, w = frame.image.shape[:2]
        for i, person in enumerate(persons):
            if not keep_detection(person.box, person.score, cfg.conf, cfg.min_box_width, cfg.min_box_height):
                continue
            box = padded_box(person.box, cfg.padding, w, h)
            det = Detection(
                detection_id=detection_id(cam.id, frame.index, person.track_id, i, run),
                camera_id=cam.id,
                timestamp=frame.timestamp,
                frame_index=frame.index,
                track_id=person.track_id,
                box=tuple(float(v) for v in box),
                score=min(1.0, person.score),
                read_at=frame.read_at,
            )
            producer.send(
                topic,
                encode_crop(CropRecord(det, crop_jpeg(frame.image, box, cfg.jpeg_quality))),
                key=cam.id.encode(),
            )
            metrics.crops_published.labels(cam.id).inc()
            published += 1
    producer.flush()
    log.info("camera %s: finished, %d crops published", cam.id, published)
    return published


def run_ingest(
    cameras: list[CameraSettings],
    cfg: IngestSettings,
    producer: Producer,
    topic: str,
    metrics: PipelineMetrics,
    stop: threading.Event,
) -> dict[str, int]:
    """Run every camera in its own thread; a camera that fails never stops the others.

    Returns crops published per camera once all sources have ended or `stop` is set.
    """
    results: dict[str, int] = {}

    def one(cam: CameraSettings) -> None:
        try:
            results[cam.id] = run_camera(cam, cfg, producer, topic, metrics, stop)
        except Exception:
            log.exception("camera %s: stopped by an error", cam.id)
            results[cam.id] = -1

    threads = [threading.Thread(target=one, args=(c,), name=f"ingest-{c.id}", daemon=True) for c in cameras]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    producer.flush()
    return results
