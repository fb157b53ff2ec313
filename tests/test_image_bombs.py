"""Decompression bombs: an image whose header declares more pixels than the limit is refused from its header,
at once and without the memory its decoding would take; OpenCV's own refusal is a BadImage too."""

from __future__ import annotations

import resource
import struct
import time
import zlib

import cv2
import numpy as np
import pytest

from pgr.images import MAX_IMAGE_PIXELS, BadImage, decode_image


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    data = bytearray(cv2.imencode(".jpg", np.full((8, 8, 3), 90, np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (valid CRC) over a tiny compressed body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("make", [jpeg_declaring, png_declaring], ids=["jpeg", "png"])
def test_a_bomb_is_refused_from_its_header(make):
    bomb = make(30000, 30000)
    assert len(bomb) < 2000
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(BadImage, match="exceeds the 16777216-pixel limit"):
        decode_image(bomb)
    elapsed = time.perf_counter() - t0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    print(f"{make.__name__}: {len(bomb)} bytes, refused in {elapsed * 1000:.1f} ms, peak +{grown_mb:.0f} MB")
    assert elapsed < 0.5 and grown_mb < 50


def test_an_image_over_the_pixel_limit_is_not_decoded():
    big = jpeg_declaring(6000, 6000)
    assert MAX_IMAGE_PIXELS < 6000 * 6000
    with pytest.raises(BadImage, match="6000x6000"):
        decode_image(big)


def test_a_format_whose_size_cannot_be_checked_is_refused():
    """A format whose header Pillow cannot read (Radiance HDR, which OpenCV would decode: 30000 x 30000
    pixels declared) is refused at once; it used to reach OpenCV."""
    bomb = (
        b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 30000 +X 30000\n" + b"\x02\x02\x75\x30" + b"\x80\x00" * 50
    )
    t0 = time.perf_counter()
    with pytest.raises(BadImage, match="not an image format this system reads"):
        decode_image(bomb)
    assert time.perf_counter() - t0 < 0.5
    ok = cv2.imencode(".jpg", np.full((64, 32, 3), 90, np.uint8))[1].tobytes()
    assert decode_image(ok).shape == (64, 32, 3)


def test_a_bomb_in_an_image_folder_camera_is_a_corrupt_frame(tmp_path, pets_video):
    import threading

    from ingest.sources import read_frames
    from pgr.metrics import PipelineMetrics
    from pgr.settings import CameraSettings, RetrySettings

    frame = cv2.VideoCapture(str(pets_video)).read()[1]
    cv2.imwrite(str(tmp_path / "000.jpg"), frame)
    (tmp_path / "001.jpg").write_bytes(jpeg_declaring(30000, 30000))
    cv2.imwrite(str(tmp_path / "002.jpg"), frame)
    metrics = PipelineMetrics()
    cam = CameraSettings(id="folder", source=str(tmp_path), fps=1, start_time=0)
    t0 = time.perf_counter()
    frames = list(read_frames(cam, RetrySettings(max_attempts=1), metrics, threading.Event()))
    assert time.perf_counter() - t0 < 2
    assert [f.index for f in frames] == [0, 2]
    assert metrics.frames_dropped.labels("folder", "corrupt")._value.get() == 1
