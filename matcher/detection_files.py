"""Per-detection files (thumbnails, stored features): safe names (written with `pgr.files.write_atomically`).

A detection's files live under `root/<camera>/<detection id><suffix>`, each part a readable prefix of the id
(characters outside [A-Za-z0-9_.-] replaced, no leading dot, at most 64 characters) plus a hash of the whole
id: `..` cannot climb out of the store, ids that differ only in replaced characters (`t/1`, `t_1`, `t 1`)
never share a file, and a name never outgrows the file system. A write goes to a temporary file first and
is renamed into place, so a crash never leaves half a file and a redelivery rewrites it whole.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_READABLE = 64


def safe_name(text: str) -> str:
    """A file-name component unique to `text`: readable prefix + 12 hex digits of its SHA-256."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    readable = _UNSAFE.sub("_", text)[:_READABLE].lstrip(".")
    return f"{readable}-{digest}" if readable else digest


def detection_path(root: Path, camera_id: str, det_id: str, suffix: str) -> Path:
    """Where a detection's file with this suffix lives (always directly under root/<camera>/)."""
    return root / safe_name(camera_id) / f"{safe_name(det_id)}{suffix}"
