"""Decoding images that arrive from outside a stage: crop JPEGs and operator uploads."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000


class BadImage(ValueError):
    """The bytes are not an image this system accepts; the message says why."""


def decode_image(data: bytes) -> np.ndarray:
    """BGR uint8 image from encoded bytes (JPEG, PNG, ...); raises BadImage."""
    if len(data) > MAX_IMAGE_BYTES:
        raise BadImage(f"image of {len(data)} bytes exceeds the {MAX_IMAGE_BYTES}-byte limit")
    if not data:
        raise BadImage("empty image")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise BadImage("not a decodable image")
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
        raise BadImage(f"image of {image.shape[1]}x{image.shape[0]} pixels is too large")
    return image


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
