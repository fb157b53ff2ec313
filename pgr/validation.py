"""Limits every record field must respect before a stage acts on it, shared by the decoders, the settings
and the index: ids that fit the index columns and make safe file names, sane times and boxes, bounded JSON.
"""

from __future__ import annotations

import re
import time
from typing import Any

# A camera id: what `cameras[].id` accepts and what the index's 64-character `camera` column holds.
CAMERA_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# A detection id: `camera:run:frame:track` and the like; printable ASCII only, well under the 256 of the
# index's primary key and short enough to be part of a file name.
DETECTION_ID = re.compile(r"^[A-Za-z0-9_.:@+-]{1,200}$")
MAX_MODEL_NAME = 128  # the index's `model` column
MAX_JSON_DEPTH = 8  # a record is flat: the deepest legitimate value is an array object inside `extra`
MAX_ARRAY_DIMS = 2
MAX_ARRAY_ELEMENTS = 4 * 1024 * 1024
MAX_FRAME_SIDE = 65536  # no camera delivers a wider or taller frame; boxes are clipped to their frame
INT64_MAX = 2**63 - 1
EARLIEST_TIME = 0.0  # unix seconds: archive footage may be old, never before 1970
FUTURE_SLACK_S = 366 * 86400.0  # a camera clock may run ahead, but not by more than a year


class Invalid(ValueError):
    """A value outside the limits; the message says which and why."""


def latest_time() -> float:
    """The latest timestamp a record may carry (now plus a year of clock skew)."""
    return time.time() + FUTURE_SLACK_S


def plausible_time(t: Any) -> bool:
    """A finite unix time between 1970 and a year from now."""
    return is_number(t) and EARLIEST_TIME <= t <= latest_time()


def is_camera_id(v: Any) -> bool:
    return isinstance(v, str) and CAMERA_ID.fullmatch(v) is not None and v not in {".", ".."}


def is_detection_id(v: Any) -> bool:
    return isinstance(v, str) and DETECTION_ID.fullmatch(v) is not None


def is_model_name(v: Any) -> bool:
    """Non-empty, at most the index column's length, printable and encodable as UTF-8."""
    return isinstance(v, str) and 0 < len(v) <= MAX_MODEL_NAME and v.isprintable() and encodable(v)


def encodable(s: str) -> bool:
    """False for strings that cannot become UTF-8 bytes (a lone surrogate from a JSON escape)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def is_int64(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -INT64_MAX <= v <= INT64_MAX


def json_depth_within(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether nested lists and objects go no deeper than `limit` (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > limit:
                return False
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def strings_encodable(value: Any) -> bool:
    """Every string (keys included) in a JSON value can be encoded as UTF-8."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str) and not encodable(v):
            return False
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return True
