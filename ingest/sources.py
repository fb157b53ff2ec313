"""Camera sources: video files, RTSP/HTTP streams, webcams and image folders, sampled at a set rate.

`read_frames` is the one loop every camera runs. It opens the source with retry and exponential backoff,
reopens a live source that drops mid-stream, skips and counts corrupt frames, and stops at the end of a
file or when told to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pgr.images import BadImage, read_image
from pgr.metrics import PipelineMetrics
from pgr.settings import CameraSettings, RetrySettings

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MAX_CONSECUTIVE_FAILED_READS = 25
DROP_REASONS = ("corrupt", "unreadable")  # the `reason` of pgr_frames_dropped


@dataclass(frozen=True)
class Frame:
    """A sampled frame: its index in the source, its timestamp (unix s) and when it was decoded."""

    index: int
    timestamp: float
    image: np.ndarray
    read_at: float


class SourceUnavailable(RuntimeError):
    """The source could not be opened."""


def is_live(source: str) -> bool:
    """Streams and webcams have no end; files and folders do."""
    return source.isdigit() or ("://" in source and not source.startswith("file://"))


class _VideoSource:
    def __init__(self, source: str) -> None:
        target: str | int = int(source) if source.isdigit() else source.removeprefix("file://")
        if isinstance(target, str) and "://" not in target and not Path(target).is_file():
            raise SourceUnavailable(f"no such video file: {target}")
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            raise SourceUnavailable(f"OpenCV cannot open {source}")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.native_fps = fps if fps and fps > 0 else None
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if count and count > 0 else None

    def grab(self) -> bool:
        return self.cap.grab()

    def retrieve(self) -> np.ndarray | None:
        ok, image = self.cap.retrieve()
        return image if ok else None

    def close(self) -> None:
        self.cap.release()


class _FolderSource:
    def __init__(self, folder: str) -> None:
        path = Path(folder)
        if not path.is_dir():
            raise SourceUnavailable(f"no such image folder: {folder}")
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceUnavailable(f"no images in {folder}")
        self.native_fps = None
        self.frame_count = len(self.files)
        self._next = 0

    def grab(self) -> bool:
        self._next += 1
        return self._next <= len(self.files)

    def retrieve(self) -> np.ndarray | None:
        try:  # the header is checked before decoding: a bomb in the folder is a corrupt frame
            return read_image(self.files[self._next - 1])
        except BadImage:
            return None

    def close(self) -> None:
        pass


_MP4_EPOCH = -2082844800  # 1904-01-01 (QuickTime/MP4 times) in unix seconds
_CONTAINERS = {b"moov"}


def recorded_at(path: Path) -> float | None:
    """When an MP4/MOV file says its recording began (the movie header's creation time), or None."""
    try:
        with Path(path).open("rb") as f:
            return _find_mvhd(f, Path(path).stat().st_size)
    except OSError:
        return None


def _find_mvhd(f, end: int) -> float | None:
    import struct

    while f.tell() + 8 <= end:
        start = f.tell()
        size, kind = struct.unpack(">I4s", f.read(8))
        if size == 1:
            size = struct.unpack(">Q", f.read(8))[0]
        elif size == 0:
            size = end - start
        if size < 8 or start + size > end:
            return None
        if kind in _CONTAINERS:
            return _find_mvhd(f, start + size)
        if kind == b"mvhd":
            version = f.read(4)[0]
            raw = f.read(8 if version == 1 else 4)
            created = int.from_bytes(raw, "big")
            return float(created + _MP4_EPOCH) if created else None
        f.seek(start + size)
    return None


def open_source(source: str) -> _VideoSource | _FolderSource:
    """Open a source once; raises SourceUnavailable."""
    if "://" not in source and not source.isdigit() and Path(source).is_dir():
        return _FolderSource(source)
    return _VideoSource(source)


def backoff_delays(retry: RetrySettings) -> Iterator[float]:
    """initial, 2x, 4x ... capped at max_s; ends after max_attempts (forever when None)."""
    attempt, delay = 0, retry.initial_s
    while retry.max_attempts is None or attempt < retry.max_attempts:
        yield delay
        attempt += 1
        delay = min(delay * 2, retry.max_s)


def _open_with_retry(
    cam: CameraSettings, retry: RetrySettings, metrics: PipelineMetrics, stop: threading.Event
):
    for delay in backoff_delays(retry):
        if stop.is_set():
            return None
        try:
            src = open_source(cam.source)
            metrics.camera_up.labels(cam.id).set(1)
            return src
        except SourceUnavailable as exc:
            metrics.camera_retries.labels(cam.id).inc()
            log.warning("camera %s: %s; retrying in %.1fs", cam.id, exc, delay)
            stop.wait(delay)
    log.error("camera %s: giving up after %s attempts", cam.id, retry.max_attempts)
    return None


def read_frames(
    cam: CameraSettings, retry: RetrySettings, metrics: PipelineMetrics, stop: threading.Event
) -> Iterator[Frame]:
    """Yield the sampled frames of one camera until its end, `stop`, or retries run out.

    `pgr_camera_up` is 1 while the source is open and 0 while it is not (not opened yet, retrying,
    reconnecting, given up); a source that reached its end (a file, `max_frames`) is not down, and its
    series is removed."""
    live = is_live(cam.source)
    start_counters(cam.id, metrics)
    ended = False  # the source reached its end (not stopped, not failed)
    start_time = cam.start_time if cam.start_time is not None else time.time()
    index = -1  # index of the last frame taken from the source, kept across reconnects
    opened_at = time.monotonic()
    last_kept_at = -float("inf")
    reconnect_delay = 0.0  # before reopening a live stream that ended: grows while connections stay short
    while not stop.is_set():
        if reconnect_delay and stop.wait(reconnect_delay):
            return
        src = _open_with_retry(cam, retry, metrics, stop)
        if src is None:
            return
        connected_at = time.monotonic()
        native_fps = src.native_fps or cam.fps
        step = max(native_fps / cam.fps, 1.0)
        failures = 0
        try:
            while not stop.is_set():
                if cam.max_frames is not None and index + 1 >= cam.max_frames:
                    ended = True
                    return
                if not src.grab():
                    at_end = src.frame_count is not None and index + 1 >= src.frame_count
                    if not live and (at_end or failures >= MAX_CONSECUTIVE_FAILED_READS):
                        ended = True
                        return
                    failures += 1
                    if live and failures >= MAX_CONSECUTIVE_FAILED_READS:
                        log.warning("camera %s: stream dropped at frame %d; reconnecting", cam.id, index)
                        metrics.camera_reconnects.labels(cam.id).inc()
                        break
                    if not live:  # a frame the container lists but cannot deliver
                        index += 1
                        metrics.frames_dropped.labels(cam.id, "unreadable").inc()
                    continue
                failures = 0
                index += 1
                now = time.time()
                if live:
                    if now - last_kept_at < 1.0 / cam.fps:
                        continue
                elif int(index / step) == int((index - 1) / step) and index > 0:
                    continue
                if cam.realtime and not live:
                    stop.wait(max(0.0, opened_at + index / native_fps - time.monotonic()))
                image = src.retrieve()
                if image is None or image.ndim != 3 or image.shape[0] < 8 or image.shape[1] < 8:
                    metrics.frames_dropped.labels(cam.id, "corrupt").inc()
                    log.warning("camera %s: corrupt frame %d skipped", cam.id, index)
                    continue
                last_kept_at = now
                metrics.frames_read.labels(cam.id).inc()
                timestamp = now if live else start_time + index / native_fps
                yield Frame(index=index, timestamp=timestamp, image=image, read_at=now)
        finally:
            src.close()
            if ended:
                metrics.camera_up.remove(cam.id)
            else:
                metrics.camera_up.labels(cam.id).set(0)
        if not live:
            return
        reconnect_delay = _next_reconnect_delay(reconnect_delay, time.monotonic() - connected_at, retry)


def start_counters(camera_id: str, metrics: PipelineMetrics) -> None:
    """Export a camera's counters at 0 (and the camera as down) before its first event, so that Prometheus'
    increase() sees the first frame dropped and an alert sees a camera that never opened."""
    for counter in (metrics.frames_read, metrics.camera_retries, metrics.camera_reconnects):
        counter.labels(camera_id)
    for why in DROP_REASONS:
        metrics.frames_dropped.labels(camera_id, why)
    metrics.camera_up.labels(camera_id).set(0)


def _next_reconnect_delay(previous: float, lasted_s: float, retry: RetrySettings) -> float:
    """How long to wait before reopening a live stream that ended: `initial_s` after a connection that lasted
    (at least `max_s`, or 5 s), else double the last wait, up to `max_s`. A stream that opens and ends at
    once (no frames, or one) is then reopened a few times a minute, not hundreds of times a second."""
    if lasted_s >= max(retry.max_s, 5.0) or previous == 0.0:
        return retry.initial_s
    return min(previous * 2, retry.max_s)
