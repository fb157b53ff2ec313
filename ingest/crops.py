"""Cutting person crops out of frames: padding, size and confidence filters, JPEG encoding."""

from __future__ import annotations

import cv2
import numpy as np


def padded_box(
    box: tuple[float, float, float, float], padding: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Grow a box by `padding` of its size on every side, clipped to the frame; integer pixels."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * padding, (y2 - y1) * padding
    return (
        max(0, int(round(x1 - dx))),
        max(0, int(round(y1 - dy))),
        min(width, int(round(x2 + dx))),
        min(height, int(round(y2 + dy))),
    )


def keep_detection(
    box: tuple[float, float, float, float], score: float, conf: float, min_width: int, min_height: int
) -> bool:
    """Drop crops too small to re-identify or too uncertain to trust."""
    x1, y1, x2, y2 = box
    return score >= conf and (x2 - x1) >= min_width and (y2 - y1) >= min_height


def crop_jpeg(image: np.ndarray, box: tuple[int, int, int, int], quality: int) -> bytes:
    """The crop of `image` inside `box` as JPEG bytes."""
    x1, y1, x2, y2 = box
    ok, buf = cv2.imencode(".jpg", image[y1:y2, x1:x2], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"could not encode crop {box}")
    return buf.tobytes()
