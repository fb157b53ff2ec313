"""A live stream that opens but hardly delivers (one frame per connection, then the connection ends) is
reopened with backoff, not in a tight loop (it was about 300 reconnects a second)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2

from ingest.sources import read_frames
from pgr.metrics import PipelineMetrics
from pgr.settings import CameraSettings, RetrySettings


class _OneFrameCamera:
    """An MJPEG camera on loopback whose every connection delivers one frame and ends."""

    def __init__(self, frame: bytes) -> None:
        self.connections = 0
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                camera.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(frame)}\r\n\r\n"
                self.wfile.write(head.encode() + frame + b"\r\n")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_stream_that_keeps_ending_is_reopened_with_backoff(pets_video):
    frame = cv2.imencode(".jpg", cv2.VideoCapture(str(pets_video)).read()[1])[1].tobytes()
    camera = _OneFrameCamera(frame)
    metrics, stop = PipelineMetrics(), threading.Event()
    cam = CameraSettings(id="flaky", source=camera.url, fps=1000)
    got: list[int] = []

    def run() -> None:
        for f in read_frames(cam, RetrySettings(initial_s=0.1, max_s=0.5), metrics, stop):
            got.append(f.index)

    reader = threading.Thread(target=run)
    try:
        reader.start()
        time.sleep(3.0)
        stop.set()
        reader.join(timeout=10)
    finally:
        camera.server.shutdown()
    reconnects = metrics.camera_reconnects.labels("flaky")._value.get()
    print(f"3 s: {camera.connections} connections, {reconnects:.0f} reconnects, {len(got)} frames")
    # backoff 0.1, 0.2, 0.4, then 0.5 s: about 8 connections in 3 s
    assert 3 <= camera.connections <= 12 and got, (camera.connections, len(got))
    assert not reader.is_alive(), "the reader stops when told, even while it waits to reconnect"
