"""Per-detection files (thumbnails, stored features): safe names, atomic writes.

A detection's files live under `root/<camera>/<detection id><suffix>`; a write goes to a temporary file
first and is renamed into place, so a crash never leaves half a file and a redelivery rewrites it whole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def detection_path(root: Path, camera_id: str, det_id: str, suffix: str) -> Path:
    """Where a detection's file with this suffix lives."""
    return root / _UNSAFE.sub("_", camera_id) / f"{_UNSAFE.sub('_', det_id)}{suffix}"


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` for a temporary file beside `path`, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    write(tmp)
    os.replace(tmp, path)
    return path
