"""Crop thumbnails on disk, one JPEG per detection, written atomically so a crash leaves no half file."""

from __future__ import annotations

import os
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ThumbnailStore:
    """Stores thumbnails under `root/<camera>/<detection id>.jpg`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, camera_id: str, det_id: str) -> Path:
        return self.root / _UNSAFE.sub("_", camera_id) / f"{_UNSAFE.sub('_', det_id)}.jpg"

    def save(self, camera_id: str, det_id: str, jpeg: bytes) -> Path:
        """Write (or rewrite, identically, on redelivery) a thumbnail; returns its path."""
        path = self.path_for(camera_id, det_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(jpeg)
        os.replace(tmp, path)
        return path
