"""Part and pixel features beside the index: Milvus holds the instance vector for the first-stage search,
this store holds what progressive re-ranking needs for the candidates (one .npz per detection).

Writes are atomic and idempotent (a redelivered record rewrites the same file), like the thumbnails.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from pgr.messages import CropFeatures

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class FeatureStore:
    """Stores CropFeatures under `root/<camera>/<detection id>.npz`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, camera_id: str, det_id: str) -> Path:
        return self.root / _UNSAFE.sub("_", camera_id) / f"{_UNSAFE.sub('_', det_id)}.npz"

    def save(self, camera_id: str, det_id: str, features: CropFeatures) -> Path | None:
        """Write the part and pixel features; None (and nothing written) when the model has none."""
        if features.parts is None or features.pixels is None:
            return None
        path = self._path(camera_id, det_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            instance=features.instance,
            parts=features.parts,
            part_visibility=features.part_visibility,
            pixels=features.pixels,
            pixel_coords=features.pixel_coords,
        )
        os.replace(tmp, path)
        return path

    def load(self, camera_id: str, det_id: str) -> CropFeatures | None:
        """The stored features of one detection, or None when there are none."""
        path = self._path(camera_id, det_id)
        if not path.is_file():
            return None
        with np.load(path) as z:
            return CropFeatures(**{k: z[k] for k in z.files})
