"""A contact sheet: the query crop beside its results, so a person can check a search at a glance."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from matcher.index import IndexedDetection

TILE_H, TILE_W = 192, 96


def write_contact_sheet(out: Path, query: Path, hits: list[IndexedDetection]) -> Path:
    """Write query | hit1 ... hitK (with scores) as one image (format from the suffix); returns its path."""
    tiles = [_tile(query, "query", (0, 200, 255))]
    tiles += [_tile(Path(h.thumbnail), f"{i}: {h.score:.2f}", (255, 255, 255)) for i, h in enumerate(hits, 1)]
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.hstack(tiles))
    return out


def _tile(path: Path, label: str, color: tuple[int, int, int]) -> np.ndarray:
    image = cv2.imread(str(path))
    tile = np.zeros((TILE_H + 20, TILE_W, 3), np.uint8)
    if image is not None:
        tile[:TILE_H] = cv2.resize(image, (TILE_W, TILE_H))
    cv2.putText(tile, label, (3, TILE_H + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1)
    return tile
