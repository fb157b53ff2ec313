"""Per-detection files (thumbnails, stored features): safe names (written with `pgr.files.write_atomically`).

A detection's files live under `root/<camera>/<detection id><suffix>`; a write goes to a temporary file
first and is renamed into place, so a crash never leaves half a file and a redelivery rewrites it whole.
"""

from __future__ import annotations

import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def detection_path(root: Path, camera_id: str, det_id: str, suffix: str) -> Path:
    """Where a detection's file with this suffix lives."""
    return root / _UNSAFE.sub("_", camera_id) / f"{_UNSAFE.sub('_', det_id)}{suffix}"
