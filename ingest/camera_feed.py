"""One camera's frames, read by a thread of their own and handed to the shared detector one at a time.

A live camera (or a file played in real time) does not wait for the detector: it holds at most `buffer`
frames (a short stall of the detector costs latency, not frames); a frame that arrives with the buffer full
pushes out the oldest, which is counted as dropped ("behind"), so latency stays bounded. A recorded file
waits instead (no frame is lost when indexing footage).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from ingest.sources import Frame, is_live, read_frames
from pgr.metrics import PipelineMetrics
from pgr.settings import CameraSettings, RetrySettings

log = logging.getLogger(__name__)


class CameraFeed:
    """A camera's reader thread and its frames waiting for the detector. `ready` (shared by every feed of a
    detector) is notified whenever a frame arrives, is taken, or a feed ends."""

    def __init__(
        self,
        cam: CameraSettings,
        retry: RetrySettings,
        metrics: PipelineMetrics,
        stop: threading.Event,
        ready: threading.Condition,
        buffer: int = 2,
    ) -> None:
        self.cam, self.retry, self.metrics, self.stop, self.ready = cam, retry, metrics, stop, ready
        self.drops_late = is_live(cam.source) or cam.realtime
        self.buffer = buffer if self.drops_late else 1
        self.frames: deque[Frame] = deque()
        self.ended = False
        self.failed = False
        self.thread = threading.Thread(target=self._read, name=f"camera-{cam.id}", daemon=True)

    def start(self) -> CameraFeed:
        self.thread.start()
        return self

    @property
    def waiting(self) -> bool:
        """A frame waits for the detector (call with `ready` held)."""
        return bool(self.frames)

    @property
    def finished(self) -> bool:
        """The source ended and its last frame was taken."""
        return self.ended and not self.frames

    def take(self) -> Frame:
        """The oldest waiting frame (call with `ready` held, when `waiting`)."""
        frame = self.frames.popleft()
        self.ready.notify_all()  # a file's reader waits for room
        return frame

    def _read(self) -> None:
        try:
            frames = read_frames(self.cam, self.retry, self.metrics, self.stop)
            while True:
                t0 = time.perf_counter()
                frame = next(frames, None)
                if frame is None:
                    log.info("camera %s: finished reading (its source ended)", self.cam.id)
                    return
                self.metrics.stage_latency.labels("decode").observe(time.perf_counter() - t0)
                self._put(frame)
        except Exception:
            log.exception("camera %s: stopped by an error", self.cam.id)
            self.failed = True
        finally:
            with self.ready:
                self.ended = True
                self.ready.notify_all()

    def _put(self, frame: Frame) -> None:
        with self.ready:
            if self.drops_late:
                if len(self.frames) >= self.buffer:
                    self.frames.popleft()
                    self.metrics.frames_dropped.labels(self.cam.id, "behind").inc()
            else:
                while len(self.frames) >= self.buffer and not self.stop.is_set():
                    self.ready.wait(0.2)
            self.frames.append(frame)
            self.ready.notify_all()
