"""A live camera on loopback: MJPEG over HTTP from a list of JPEG frames, which can be taken away (its
streams end, new connections get 503), brought back, or made to send broken frames. The fault drill and the
monitoring tests point `cameras[].source` at its `url`."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2

# What a camera sends when its encoder breaks: a JPEG header and no image behind it.
BROKEN_FRAME = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


class LoopbackCamera:
    """MJPEG frames at `fps`, cycling through `frames`, while `up`; `broken` sends BROKEN_FRAME instead."""

    def __init__(self, frames: list[bytes], fps: float = 10.0) -> None:
        if not frames:
            raise ValueError("a camera needs at least one frame")
        self.frames, self.fps = frames, fps
        self.up, self.broken = threading.Event(), threading.Event()
        self.up.set()
        self.frames_sent = 0
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not camera.up.is_set():
                    self.send_error(503, "camera unavailable")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while camera.up.is_set():
                        f = BROKEN_FRAME if camera.broken.is_set() else camera.frames[i % len(camera.frames)]
                        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(f)}\r\n\r\n"
                        self.wfile.write(head.encode() + f + b"\r\n")
                        camera.frames_sent += 1
                        i += 1
                        time.sleep(1.0 / camera.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, name="loopback-camera", daemon=True).start()

    def go_down(self) -> None:
        """The camera disappears: open streams end, new connections are refused with 503."""
        self.up.clear()

    def come_back(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.up.clear()
        self.server.shutdown()
        self.server.server_close()


def video_frames(path: Path, count: int, every: int = 1, quality: int = 85) -> list[bytes]:
    """`count` frames of a video (every `every`-th) as JPEG bytes."""
    cap = cv2.VideoCapture(str(path))
    out: list[bytes] = []
    i = 0
    while len(out) < count:
        ok, image = cap.read()
        if not ok:
            break
        if i % every == 0:
            out.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
        i += 1
    cap.release()
    if len(out) < count:
        raise ValueError(f"{path} has fewer than {count * every} frames")
    return out
