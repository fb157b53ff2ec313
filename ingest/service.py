"""The ingest service: every camera's frames, read by a thread per camera, go through one detector in
batches (frames of several cameras in one inference); a second thread tracks each camera's persons, cuts
and publishes their crops (every crop, or per track a representative every `ingest.representative_s`).

    camera threads --frames--> detector (batches) --boxes--> tracking, crops, publish
           (a live camera holds a few frames; with more, the oldest is dropped and counted "behind")
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from ingest.camera_feed import CameraFeed
from ingest.crops import crop_jpeg, keep_detection, padded_box
from ingest.detector import PersonDetector, build_detector
from ingest.representatives import Candidate, RepresentativePicker
from ingest.sources import Frame, is_live
from ingest.tracking import CameraTracker, untracked
from ingest.yolo_openvino import Boxes
from matcher.tracklets import crop_quality
from pgr.messages import CropRecord, Detection, detection_id, encode_crop, run_tag
from pgr.metrics import PipelineMetrics
from pgr.settings import CameraSettings, IngestSettings
from pgr.transport import Producer

log = logging.getLogger(__name__)
Batch = list[tuple[CameraFeed, Frame]]


def run_camera(
    cam: CameraSettings,
    cfg: IngestSettings,
    producer: Producer,
    topic: str,
    metrics: PipelineMetrics,
    stop: threading.Event,
) -> int:
    """Process one camera until its source ends (or `stop`); returns the number of crops published."""
    return run_ingest([cam], cfg, producer, topic, metrics, stop)[cam.id]


def run_ingest(
    cameras: list[CameraSettings],
    cfg: IngestSettings,
    producer: Producer,
    topic: str,
    metrics: PipelineMetrics,
    stop: threading.Event,
    detector: PersonDetector | None = None,
) -> dict[str, int]:
    """Run every camera until all sources have ended or `stop` is set; a camera that fails never stops the
    others. Returns crops published per camera (-1: the camera stopped with an error)."""
    detector = detector or build_detector(cfg)
    ready = threading.Condition()
    feeds = [
        CameraFeed(cam, cfg.retry, metrics, stop, ready, cfg.live_buffer_frames).start() for cam in cameras
    ]
    publisher = CropPublisher(cfg, producer, topic, metrics)
    for cam in cameras:  # exported at 0: a camera's first detection is then an increase
        metrics.detections.labels(cam.id)
        metrics.crops_published.labels(cam.id)
    detected: queue.Queue[tuple[Batch, list[Boxes]] | None] = queue.Queue(maxsize=2)
    post = threading.Thread(target=publisher.run, args=(detected,), name="ingest-publish", daemon=True)
    post.start()
    turn = 0
    try:
        while publisher.error is None:
            batch = _next_batch(feeds, ready, cfg.detect_batch, stop, turn)
            if batch is None:
                break
            turn += 1
            t0 = time.perf_counter()
            try:
                boxes = detector.detect([frame.image for _, frame in batch])
            except Exception:
                log.exception("detection of %d frames failed; they are dropped", len(batch))
                for feed, _ in batch:
                    metrics.frames_dropped.labels(feed.cam.id, "error").inc()
                continue
            metrics.detector_batches.inc()
            share = (time.perf_counter() - t0) / len(batch)
            for feed, _ in batch:
                metrics.stage_latency.labels("detect").observe(share)
                metrics.frames_detected.labels(feed.cam.id).inc()
            while publisher.error is None:
                try:
                    detected.put((batch, boxes), timeout=0.5)
                    break
                except queue.Full:
                    continue
    finally:
        stop_feeds = publisher.error is not None
        if stop_feeds:
            stop.set()
        detected.put(None)
        post.join()
        for feed in feeds:  # ended, or ending now that stop is set
            feed.thread.join(timeout=5)
    if publisher.error is None:
        producer.flush()
    results = {}
    for feed in feeds:
        cam = feed.cam.id
        failed = feed.failed or publisher.error is not None
        results[cam] = -1 if failed else publisher.published.get(cam, 0)
        if not failed:
            log.info("camera %s: finished, %d crops published", cam, results[cam])
    return results


def _next_batch(
    feeds: list[CameraFeed], ready: threading.Condition, size: int, stop: threading.Event, turn: int
) -> Batch | None:
    """Up to `size` waiting frames, one per camera (taking turns when more cameras wait than fit); None
    when every source has ended or `stop` is set."""
    with ready:
        while True:
            if stop.is_set():
                return None
            waiting = [f for f in feeds if f.waiting]
            if waiting:
                start = turn % len(waiting)
                chosen = (waiting[start:] + waiting[:start])[:size]
                return [(feed, feed.take()) for feed in chosen]
            if all(f.finished for f in feeds):
                return None
            ready.wait(0.5)


class CropPublisher:
    """Tracks each camera's persons, cuts their crops and publishes them (runs on its own thread)."""

    def __init__(self, cfg: IngestSettings, producer: Producer, topic: str, metrics: PipelineMetrics) -> None:
        self.cfg, self.producer, self.topic, self.metrics = cfg, producer, topic, metrics
        self.trackers: dict[str, CameraTracker] = {}
        self.pickers: dict[str, RepresentativePicker] = {}
        self.runs: dict[str, str | None] = {}
        self.published: dict[str, int] = {}
        self.error: BaseException | None = None

    def run(self, detected: queue.Queue) -> None:
        """Publish every detected batch until the end marker (None); then the pending representatives."""
        try:
            for batch, boxes in iter(detected.get, None):
                for (feed, frame), frame_boxes in zip(batch, boxes, strict=True):
                    self.publish_frame(feed.cam, frame, frame_boxes)
            for cam_id, picker in self.pickers.items():
                for c in picker.flush():
                    self._send(cam_id, *c.item)
        except BaseException as exc:  # the broker: the ingest loop stops, nothing more is taken
            log.exception("publishing crops failed")
            self.error = exc
            while detected.get() is not None:  # let the ingest loop finish
                pass

    def publish_frame(self, cam: CameraSettings, frame: Frame, boxes: Boxes) -> None:
        """Track one frame's boxes and publish its crops (or the representatives now due)."""
        t0 = time.perf_counter()
        cfg = self.cfg
        if cam.id not in self.runs:
            # live counters restart with every run; a file's ids carry its tag when it has one (`pgr index`)
            self.runs[cam.id] = run_tag() if is_live(cam.source) else cam.id_tag
            self.published[cam.id] = 0
            if cam.track:
                self.trackers[cam.id] = CameraTracker(cfg.tracker)
            if cfg.representative_s is not None:
                self.pickers[cam.id] = RepresentativePicker(cfg.representative_s)
        persons = self.trackers[cam.id].update(boxes, frame.image) if cam.track else untracked(boxes)
        self.metrics.detections.labels(cam.id).inc(len(persons))
        h, w = frame.image.shape[:2]
        picker = self.pickers.get(cam.id)
        candidates = []
        for i, person in enumerate(persons):
            if not keep_detection(person.box, person.score, cfg.conf, cfg.min_box_width, cfg.min_box_height):
                continue
            box = padded_box(person.box, cfg.padding, w, h)
            det = Detection(
                detection_id=detection_id(cam.id, frame.index, person.track_id, i, self.runs[cam.id]),
                camera_id=cam.id,
                timestamp=frame.timestamp,
                frame_index=frame.index,
                track_id=person.track_id,
                box=tuple(float(v) for v in box),
                score=min(1.0, person.score),
                read_at=frame.read_at,
            )
            jpeg = crop_jpeg(frame.image, box, cfg.jpeg_quality)
            if picker is None:
                self._send(cam.id, det, jpeg)
            else:
                quality = crop_quality(det.box, det.score, jpeg)
                candidates.append(Candidate(person.track_id, quality, (det, jpeg)))
        if picker is not None:
            for c in picker.offer(frame.timestamp, candidates):
                self._send(cam.id, *c.item)
        self.metrics.stage_latency.labels("track").observe(time.perf_counter() - t0)

    def _send(self, cam_id: str, det: Detection, jpeg: bytes) -> None:
        self.producer.send(self.topic, encode_crop(CropRecord(det, jpeg)), key=cam_id.encode())
        self.metrics.crops_published.labels(cam_id).inc()
        self.published[cam_id] += 1
