"""Crop thumbnails on disk, one JPEG per detection."""

from __future__ import annotations

from pathlib import Path

from matcher.detection_files import detection_path
from pgr.files import write_atomically


class ThumbnailStore:
    """Stores thumbnails under `root/<camera>/<detection id>.jpg`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, camera_id: str, det_id: str) -> Path:
        return detection_path(self.root, camera_id, det_id, ".jpg")

    def save(self, camera_id: str, det_id: str, jpeg: bytes) -> Path:
        """Write (or rewrite, identically, on redelivery) a thumbnail; returns its path."""
        return write_atomically(self.path_for(camera_id, det_id), lambda tmp: tmp.write_bytes(jpeg))

    def remove(self, camera_id: str, det_id: str) -> None:
        """Delete a detection's thumbnail (the index refused its row), if there is one."""
        self.path_for(camera_id, det_id).unlink(missing_ok=True)
