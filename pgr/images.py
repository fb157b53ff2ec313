"""Decoding images that arrive from outside a stage: crop JPEGs and operator uploads.

The size an image declares is read from its header (Pillow reads headers without decoding) and checked
before any pixel is decoded: a 600-byte file may declare 30000 x 30000 pixels and take gigabytes to decode.
OpenCV is told the same limit (it reads OPENCV_IO_MAX_IMAGE_PIXELS when it is first imported, so this holds
where this module is imported first) and its errors are BadImage too.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096  # a person crop of an 8K frame, a 16-megapixel upload
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))  # read at OpenCV's first decode
import cv2  # noqa: E402  (after the limit it reads)
from PIL import Image  # noqa: E402


class BadImage(ValueError):
    """The bytes are not an image this system accepts; the message says why."""


class ImageTooLarge(BadImage):
    """An image over the byte or pixel limit (a decompression bomb among them)."""


def decode_image(
    data: bytes, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """BGR uint8 image from encoded bytes (JPEG, PNG, ...); raises BadImage. Limits may only be lowered."""
    max_bytes, max_pixels = min(max_bytes, MAX_IMAGE_BYTES), min(max_pixels, MAX_IMAGE_PIXELS)
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    if not data:
        raise BadImage("empty image")
    check_declared_size(data, max_pixels)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # OpenCV's own pixel limit, a corrupt stream
        raise BadImage(f"not a decodable image: {str(exc).strip().splitlines()[-1][:200]}") from None
    if image is None or image.size == 0:
        raise BadImage("not a decodable image")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageTooLarge(f"image of {image.shape[1]}x{image.shape[0]} pixels is too large")
    return image


def check_declared_size(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> str:
    """Raise BadImage when the header declares more than `max_pixels`, without decoding any pixel, or
    when Pillow cannot read the header: a format whose size cannot be checked first is not decoded at all.
    Returns the format the header names (Pillow's name: JPEG, PNG, ...)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            (width, height), kind = header_size(data)
        except Image.DecompressionBombError as exc:  # over Pillow's own limit, far above ours
            raise ImageTooLarge(f"image exceeds the {max_pixels}-pixel limit: {exc}") from None
        except Exception:  # Pillow raises many kinds for headers it cannot read
            raise BadImage(
                "not an image format this system reads (JPEG, PNG, BMP, WebP, TIFF, ...)"
            ) from None
    if width * height > max_pixels:
        raise ImageTooLarge(f"image of {width}x{height} pixels exceeds the {max_pixels}-pixel limit")
    return kind


def header_size(data: bytes) -> tuple[tuple[int, int], str]:
    """(width, height) and format name as the image's header declares them, no pixel decoded; raises
    what Pillow raises for a header it cannot read."""
    with Image.open(io.BytesIO(data)) as im:
        return im.size, im.format or "?"


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file; raises BadImage naming the file."""
    p = Path(path)
    if not p.is_file():
        raise BadImage(f"no such image file: {p}")
    if p.stat().st_size > MAX_IMAGE_BYTES:
        raise BadImage(f"{p}: {p.stat().st_size} bytes exceeds the {MAX_IMAGE_BYTES}-byte limit")
    try:
        return decode_image(p.read_bytes())
    except BadImage as exc:
        raise BadImage(f"{p}: {exc}") from None
