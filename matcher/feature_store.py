"""Part and pixel features beside the index: Milvus holds the instance vector for the first-stage search,
this store holds what progressive re-ranking needs for the candidates (one .npz per detection).

Writes are atomic and idempotent (a redelivered record rewrites the same file), like the thumbnails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from matcher.detection_files import detection_path
from pgr.files import write_atomically
from pgr.messages import CropFeatures


class FeatureStore:
    """Stores CropFeatures under `root/<camera>/<detection id>.npz`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, camera_id: str, det_id: str) -> Path:
        return detection_path(self.root, camera_id, det_id, ".npz")

    def save(self, camera_id: str, det_id: str, features: CropFeatures) -> Path | None:
        """Write the part and pixel features; None (and nothing written) when the model has none."""
        if features.parts is None or features.pixels is None:
            return None
        arrays = {
            "instance": features.instance,
            "parts": features.parts,
            "part_visibility": features.part_visibility,
            "pixels": features.pixels,
            "pixel_coords": features.pixel_coords,
        }
        return write_atomically(self._path(camera_id, det_id), lambda tmp: np.savez(tmp, **arrays))

    def remove(self, camera_id: str, det_id: str) -> None:
        """Delete a detection's stored features (the index refused its row), if there are any."""
        self._path(camera_id, det_id).unlink(missing_ok=True)

    def load(self, camera_id: str, det_id: str) -> CropFeatures | None:
        """The stored features of one detection, or None when there are none."""
        path = self._path(camera_id, det_id)
        if not path.is_file():
            return None
        with np.load(path) as z:
            return CropFeatures(**{k: z[k] for k in z.files})
