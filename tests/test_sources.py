"""Camera sources: a failing camera is retried while another keeps flowing; corrupt frames are skipped."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2

from ingest.service import run_ingest
from ingest.sources import read_frames
from pgr.messages import decode_crop
from pgr.metrics import PipelineMetrics
from pgr.settings import CameraSettings, RetrySettings, load_settings
from pgr.transport import InProcessBus


def test_failing_camera_is_retried_while_the_other_flows(write_config, pets_video):
    settings = load_settings(
        write_config(
            cameras=[
                {"id": "good", "source": str(pets_video), "fps": 2, "max_frames": 100},
                {"id": "bad", "source": "rtsp://127.0.0.1:9/unreachable", "fps": 2},
            ]
        )
    )
    bus, metrics = InProcessBus(), PipelineMetrics()
    result = run_ingest(
        settings.cameras, settings.ingest, bus.producer(), "crops", metrics, threading.Event()
    )
    assert result["good"] > 0 and result["bad"] == 0
    cams = {decode_crop(m.value).detection.camera_id for m in bus.records("crops")}
    assert cams == {"good"}
    assert metrics.camera_retries.labels("bad")._value.get() == 3  # max_attempts in the test config
    assert metrics.frames_read.labels("good")._value.get() == 20


def test_corrupt_images_are_skipped_and_counted(tmp_path, pets_video):
    cap = cv2.VideoCapture(str(pets_video))
    for i in range(4):
        ok, frame = cap.read()
        assert ok
        cv2.imwrite(str(tmp_path / f"{i:03d}.jpg"), frame)
    (tmp_path / "002.jpg").write_bytes(b"\xff\xd8\xff garbage, not a JPEG body")
    metrics = PipelineMetrics()
    cam = CameraSettings(id="folder", source=str(tmp_path), fps=1, start_time=0)
    frames = list(read_frames(cam, RetrySettings(max_attempts=1), metrics, threading.Event()))
    assert [f.index for f in frames] == [0, 1, 3]
    assert [f.timestamp for f in frames] == [0.0, 1.0, 3.0]
    assert metrics.frames_dropped.labels("folder", "corrupt")._value.get() == 1


def test_camera_stops_retrying_when_told(tmp_path):
    metrics, stop = PipelineMetrics(), threading.Event()
    cam = CameraSettings(id="gone", source=str(tmp_path / "missing.mp4"), fps=1)
    stop.set()
    assert list(read_frames(cam, RetrySettings(), metrics, stop)) == []


class _FlakyMjpegCamera:
    """A live MJPEG-over-HTTP camera on loopback: the first connection drops after `first` frames, the next
    `refuse` connections get 503, later ones stream again."""

    def __init__(self, frames: list[bytes], first: int, refuse: int) -> None:
        self.connections = 0
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                camera.connections += 1
                n = camera.connections
                if 1 < n <= 1 + refuse:
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                count = first if n == 1 else 10_000
                try:
                    for i in range(count):
                        f = frames[i % len(frames)]
                        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(f)}\r\n\r\n"
                        self.wfile.write(head.encode() + f + b"\r\n")
                        time.sleep(0.02)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_live_stream_that_drops_is_reopened_with_backoff(pets_video):
    cap = cv2.VideoCapture(str(pets_video))
    frames = [cv2.imencode(".jpg", cap.read()[1])[1].tobytes() for _ in range(10)]
    camera = _FlakyMjpegCamera(frames, first=15, refuse=2)
    metrics = PipelineMetrics()
    cam = CameraSettings(id="live", source=camera.url, fps=1000, max_frames=40)
    try:
        got = list(read_frames(cam, RetrySettings(initial_s=0.1, max_s=0.2), metrics, threading.Event()))
    finally:
        camera.server.shutdown()
    assert metrics.camera_reconnects.labels("live")._value.get() == 1
    assert metrics.camera_retries.labels("live")._value.get() == 2  # the two refused reconnections
    assert len(got) > 15, "frames kept flowing after the reconnection"
    assert [f.index for f in got] == sorted({f.index for f in got})
