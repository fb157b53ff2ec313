"""Part and pixel features beside the index: the index holds the instance vector for the first-stage
search, this store holds what progressive re-ranking needs for the candidates.

Row-addressable, memory-mapped arrays in append-only segments (`matcher.segments`): instance (d float32),
parts (p x d) and their visibility, and the pixels (a variable number of foreground cells x d', with their
(row, col)) as ragged columns. Loading the candidates of one search is a dictionary look-up and a gather
per column, not a file per detection (BENCHMARKS.md, "Search"). Writes are durable and idempotent on the
detection id (a redelivered record replaces its row); `delete` + `compact` erase.

The column types come from the first features stored (the model's sizes); features of other sizes are
refused with the reason (ValueError).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matcher.segments import Column, SegmentStore, Snapshot
from pgr.messages import CropFeatures

KIND = "features"
TAIL_ROWS = 65536


@dataclass
class FeatureRows:
    """The features of several detections, stacked; pixel sets padded to the largest (`pixel_mask` marks
    the real cells). Rows follow the ids asked for that the store has (`found`)."""

    found: np.ndarray  # (n_asked,) bool: which asked ids are here, in order
    instances: np.ndarray  # (G, d) float32
    parts: np.ndarray  # (G, p, d)
    visibility: np.ndarray  # (G, p) bool
    pixels: np.ndarray | None  # (G, n, d'), None when not asked for
    pixel_coords: np.ndarray | None  # (G, n, 2) int16
    pixel_mask: np.ndarray | None  # (G, n) bool


class FeatureStore:
    """Stores CropFeatures by detection id under `root` (a folder of segments)."""

    def __init__(self, root: Path, tail_rows: int = TAIL_ROWS) -> None:
        self.root = Path(root)
        self.store = SegmentStore(self.root, KIND, tail_rows)

    def _columns(self, f: CropFeatures) -> list[Column]:
        return [
            Column("instance", "<f4", tuple(f.instance.shape)),
            Column("parts", f.parts.dtype.str, tuple(f.parts.shape)),
            Column("visibility", "|b1", tuple(f.part_visibility.shape)),
            Column("pixels", f.pixels.dtype.str, tuple(f.pixels.shape[1:]), ragged=True),
            Column("pixel_coords", "<i2", (2,), ragged=True),
        ]

    def _check(self, det_id: str, f: CropFeatures, cols: dict[str, Column]) -> str | None:
        """Why these features do not fit `cols` (the store's columns), or None."""
        want = {
            "instance": tuple(f.instance.shape),
            "parts": tuple(f.parts.shape),
            "visibility": tuple(f.part_visibility.shape),
            "pixels": tuple(f.pixels.shape[1:]),
        }
        for name, shape in want.items():
            if cols[name].shape != shape:
                return (
                    f"features of {det_id}: {name} of shape {shape}, the store at {self.root} holds "
                    f"{cols[name].shape} (another model setting)"
                )
        if f.pixel_coords.shape != (len(f.pixels), 2):
            return f"features of {det_id}: {len(f.pixels)} pixels but pixel_coords {f.pixel_coords.shape}"
        return None

    def misfits(self, items: Sequence[tuple[str, CropFeatures]]) -> dict[str, str]:
        """Of `items`, those `save_many` would refuse (detection id: reason): features that do not fit the
        store's sizes (before the store exists: the first item's)."""
        batch = [(det_id, f) for det_id, f in items if f.parts is not None and f.pixels is not None]
        if not batch:
            return {}
        first = batch[0][1]
        cols = self.store.columns if self.store.exists else {c.name: c for c in self._columns(first)}
        return {det_id: why for det_id, f in batch if (why := self._check(det_id, f, cols))}

    def save(self, camera_id: str, det_id: str, features: CropFeatures) -> Path | None:
        """Write one detection's part and pixel features (one commit); None (nothing written) when the
        model has none, else the store's folder. Raises ValueError for features that do not fit."""
        if features.parts is None or features.pixels is None:
            return None
        refused = self.save_many([(det_id, features)])
        if refused:
            raise ValueError(refused[det_id])
        return self.root

    def save_many(self, items: Sequence[tuple[str, CropFeatures]]) -> dict[str, str]:
        """Write features by detection id in one commit (items without parts are skipped; a later item of
        the same id wins). Returns those refused (detection id: reason; they do not fit the store's
        sizes), which are not written. Raises OSError for a disk that cannot be written: nothing of this
        call is then written, and every earlier write is intact."""
        batch = {det_id: f for det_id, f in items if f.parts is not None and f.pixels is not None}
        if not batch:
            return {}
        if not self.store.exists:
            self.store.create(self._columns(next(iter(batch.values()))), {})
        refused = self.misfits(list(batch.items()))
        batch = {det_id: f for det_id, f in batch.items() if det_id not in refused}
        if not batch:
            return refused
        feats = list(batch.values())
        cols = self.store.columns
        self.store.write(
            list(batch),
            {
                "instance": np.stack([f.instance for f in feats]),
                "parts": np.stack([f.parts for f in feats]).astype(cols["parts"].dtype),
                "visibility": np.stack([f.part_visibility for f in feats]).astype(bool),
                "pixels": [f.pixels for f in feats],
                "pixel_coords": [f.pixel_coords for f in feats],
            },
        )
        return refused

    def remove(self, camera_id: str, det_id: str) -> None:
        """Delete a detection's stored features (the index refused its row), if there are any."""
        self.delete([det_id])

    def delete(self, det_ids: Sequence[str]) -> int:
        """Delete features by detection id (missing ids are ignored); returns how many were there. The data
        leave the disk at the next `compact`."""
        if not self.store.exists or not det_ids:
            return 0
        return self.store.write(delete=list(dict.fromkeys(det_ids)))

    def compact(self, min_dead_fraction: float = 0.0) -> int:
        """Rewrite the segments holding deleted rows (at least this fraction) without them: deleted
        features leave the disk. Returns how many rows were dropped."""
        if not self.store.exists:
            return 0
        return self.store.compact(min_dead_fraction, include_tail=min_dead_fraction == 0.0)

    def preload(self) -> int:
        """Map what the part stage reads of every candidate (instance, parts, visibility) into memory, from
        the disk if need be (segments mapped before are skipped); pixels stay on demand (a search reads
        those of N2 candidates). Returns the bytes mapped by this call."""
        if not self.store.exists:
            return 0
        return self.store.populate(["instance", "parts", "visibility"])

    def load(self, camera_id: str, det_id: str) -> CropFeatures | None:
        """The stored features of one detection, or None when there are none."""
        rows = self.load_rows([det_id])
        if rows is None or not rows.found[0]:
            return None
        n = int(rows.pixel_mask[0].sum())
        return CropFeatures(
            instance=rows.instances[0],
            parts=rows.parts[0],
            part_visibility=rows.visibility[0],
            pixels=rows.pixels[0, :n],
            pixel_coords=rows.pixel_coords[0, :n],
        )

    def load_rows(self, det_ids: Sequence[str], pixels: bool = True) -> FeatureRows | None:
        """The features of these detections, stacked (those without features are left out: see `found`);
        None when the store is empty. `pixels=False` skips the pixel sets (the part stage needs none)."""
        if not self.store.exists:
            return None
        snap, where = self.store.locate(det_ids)
        found = np.array([w is not None for w in where], bool)
        locs = [w for w in where if w is not None]
        return _gather(snap, self.store.columns, locs, found, pixels)


def _gather(
    snap: Snapshot, cols: dict[str, Column], locs: list[tuple[int, int]], found: np.ndarray, pixels: bool
) -> FeatureRows:
    """Stack the rows at `locs` (segment id, row), in order: a gather per segment and fixed column; each
    row's pixel cells (contiguous in their file) are copied straight into the padded arrays."""
    g = len(locs)
    where = np.array(locs, np.int64).reshape(g, 2)
    seg_of, row_of = where[:, 0], where[:, 1]
    order = np.argsort(seg_of, kind="stable")
    sids, firsts = np.unique(seg_of[order], return_index=True)
    split = np.split(order, firsts[1:]) if g else []
    groups = [(snap.by_id[sid], at, row_of[at]) for sid, at in zip(sids.tolist(), split, strict=True)]
    out = FeatureRows(
        found,
        np.empty((g, *cols["instance"].shape), cols["instance"].dtype),
        np.empty((g, *cols["parts"].shape), cols["parts"].dtype),
        np.empty((g, *cols["visibility"].shape), bool),
        None,
        None,
        None,
    )
    bounds = np.zeros((g, 2), np.int64)  # each row's first and past-last pixel item in its segment
    for seg, at, rows in groups:  # start every read from the disk at once (nothing when cached)
        seg.prefetch("instance", rows, rows + 1)
        seg.prefetch("parts", rows, rows + 1)
        if pixels:
            ends = seg.ends("pixels")
            bounds[at, 1] = ends[rows]
            bounds[at, 0] = np.where(rows > 0, ends[np.maximum(rows - 1, 0)], 0)
            seg.prefetch("pixels", bounds[at, 0], bounds[at, 1])
    for seg, at, rows in groups:
        out.instances[at] = seg.array("instance")[rows]
        out.parts[at] = seg.array("parts")[rows]
        out.visibility[at] = seg.array("visibility")[rows]
    if not pixels:
        return out
    lengths = bounds[:, 1] - bounds[:, 0]
    width = int(lengths.max()) if g else 0
    out.pixels = np.zeros((g, width, *cols["pixels"].shape), cols["pixels"].dtype)
    out.pixel_coords = np.zeros((g, width, 2), np.int16)
    out.pixel_mask = np.arange(width)[None, :] < lengths[:, None]
    for seg, at, _ in groups:
        px, xy = seg.array("pixels"), seg.array("pixel_coords")
        for i, a, b in zip(at.tolist(), bounds[at, 0].tolist(), bounds[at, 1].tolist(), strict=True):
            out.pixels[i, : b - a] = px[a:b]
            out.pixel_coords[i, : b - a] = xy[a:b]
    return out
