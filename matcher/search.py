"""Operator search: embed a person image with the pipeline's extractor and query the index."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from matcher.index import DetectionIndex, IndexedDetection
from pgr.images import read_image
from reid.extractor import FeatureExtractor


def search_image(
    index: DetectionIndex,
    extractor: FeatureExtractor,
    image: Path | np.ndarray,
    top_k: int = 10,
    camera: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[IndexedDetection]:
    """Ranked detections most like the person in `image` (a file or a BGR array)."""
    pixels = read_image(image) if isinstance(image, Path) else image
    vector = extractor.extract([pixels])[0].instance
    return index.search(vector, top_k=top_k, camera=camera, since=since, until=until)
