"""The embedded detection index: instance vectors and detection metadata in append-only segments on disk
(`matcher.segments`), searched exactly over the rows a camera and time filter selects.

Why not milvus-lite: at 100k rows it answers a top-1000 in about 0.3 s and inserts about 1,500-6,700 rows
a second; this index answers the same filtered search at 1M rows in milliseconds (BENCHMARKS.md, "Index").
Milvus, by URI, stays the scale-out path (`matcher.index: milvus`).

How a search runs: when a segment is sealed (every `tail_rows` rows) its rows are sorted by (camera, time),
so a camera and time filter selects one contiguous slice per segment and camera (two binary searches), and
stage 1 scores only those rows: FAISS's SIMD inner products over the memory-mapped float32 vectors of each
slice, exact, so recall against exact search is 1. The open tail (the newest rows, unsorted) is filtered
with a mask. Vectors are stored L2-normalised: the dot product is the cosine, as Milvus's COSINE metric.

The index stores its model name and vector size and refuses a writer or reader of another (IndexMismatch);
a row of another vector size or model is refused like Milvus refuses one (returned by `upsert`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from matcher.index import Candidates, IndexedDetection, IndexRow, check_filter
from matcher.segments import Column, SegmentStore, SegmentView, Snapshot
from pgr.errors import IndexMismatch

KIND = "detection-index"
TAIL_ROWS = 65536  # rows of the unsorted tail before it is sealed (sorted by camera and time)


def _columns(dim: int) -> list[Column]:
    return [
        Column("vec", "<f4", (dim,)),
        Column("cam", "<i4"),  # index into attrs["cameras"]
        Column("ts", "<f8"),
        Column("frame", "<i8"),
        Column("track", "<i8"),
        Column("box", "<f4", (4,)),
        Column("score", "<f4"),
        Column("read_at", "<f8"),
        Column("indexed_at", "<f8"),
        Column("thumb", "|u1", ragged=True),
    ]


def _by_camera_and_time(seg: SegmentView, rows: np.ndarray) -> np.ndarray:
    """The order a sealed segment keeps: camera, then time."""
    order = np.lexsort((seg.array("ts")[rows], seg.array("cam")[rows]))
    return rows[order]


class EmbeddedIndex:
    """Detections in a folder of append-only segments; any number of processes may read and write it.

    A writer passes `dim` (and `model`), the configured model's: a missing index is created with them, an
    existing one of another size or model is refused (IndexMismatch). A reader may pass them to be refused
    the same way, or nothing to take what is there.
    """

    def __init__(
        self, path: str | Path, dim: int | None = None, model: str | None = None, tail_rows: int = TAIL_ROWS
    ) -> None:
        self.uri, self.collection = str(path), "detections"
        self.store = SegmentStore(Path(path), KIND, tail_rows, seal_order=_by_camera_and_time)
        if not self.store.exists and dim is not None:
            self.store.create(_columns(dim), {"dim": dim, "model": model, "cameras": []})
        self.dim: int | None = None
        self.model: str | None = None
        if self.store.exists:
            attrs = self.store.attrs
            self.dim, self.model = int(attrs["dim"]), attrs.get("model")
            if dim is not None and dim != self.dim:
                raise IndexMismatch(
                    f"index {path} holds {self.dim}-d vectors (model {self.model}), the configured model "
                    f"makes {dim}-d ones: index into another folder, or configure the model it was built with"
                )
            if model is not None and self.model is not None and model != self.model:
                raise IndexMismatch(
                    f"index {path} holds features of model {self.model}, the configured model is {model}: "
                    "index into another folder, or configure the model it was built with"
                )

    # ----- writing

    def upsert(self, rows: list[IndexRow]) -> dict[str, str]:
        """Write rows, replacing any with the same detection id, in one commit. Returns the rows refused
        (detection id: reason), which are not written. Raises OSError (a full disk) with nothing written."""
        if not rows:
            return {}
        if self.dim is None:
            raise ValueError("the index has no collection yet: open it with the model's dim to write")
        refused: dict[str, str] = {}
        for r in rows:
            if r.instance.shape != (self.dim,):
                refused[r.detection.detection_id] = (
                    f"vector of shape {r.instance.shape}, the index holds ({self.dim},)"
                )
            elif not np.all(np.isfinite(r.instance)) or not np.any(r.instance):
                refused[r.detection.detection_id] = "vector is not finite or is all zeros"
        last = {r.detection.detection_id: r for r in rows if r.detection.detection_id not in refused}
        with self.store.transaction():
            model = self.store.attrs.get("model")
            for det_id, r in list(last.items()):
                if model is not None and r.model != model:
                    refused[det_id] = f"features of model {r.model!r}, the index holds {model!r}"
                    del last[det_id]
            batch = list(last.values())
            if not batch:
                return refused
            cameras = list(self.store.attrs["cameras"])
            code = {c: i for i, c in enumerate(cameras)}
            for r in batch:
                if r.detection.camera_id not in code:
                    code[r.detection.camera_id] = len(cameras)
                    cameras.append(r.detection.camera_id)
            vecs = np.stack([r.instance for r in batch]).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            dets = [r.detection for r in batch]
            now = time.time()
            columns = {
                "vec": vecs,
                "cam": np.array([code[d.camera_id] for d in dets], np.int32),
                "ts": np.array([d.timestamp for d in dets], np.float64),
                "frame": np.array([d.frame_index for d in dets], np.int64),
                "track": np.array([d.track_id for d in dets], np.int64),
                "box": np.array([d.box for d in dets], np.float32),
                "score": np.array([d.score for d in dets], np.float32),
                "read_at": np.array([d.read_at for d in dets], np.float64),
                "indexed_at": np.full(len(dets), now, np.float64),
                "thumb": [np.frombuffer(r.thumbnail.encode(), np.uint8) for r in batch],
            }
            attrs = {"cameras": cameras}
            if model is None:
                attrs["model"] = self.model = batch[0].model
            self.store.write([d.detection_id for d in dets], columns, attrs=attrs)
        return refused

    def delete(self, ids: list[str]) -> int:
        """Delete detections by id (missing ids are ignored); returns how many were there. Their data leave
        the disk at the next `compact`."""
        if self.dim is None or not ids:
            return 0
        return self.store.write(delete=list(dict.fromkeys(ids)))

    def compact(self, min_dead_fraction: float = 0.0) -> int:
        """Rewrite the segments holding deleted rows (at least this fraction) without them, the tail
        included: deleted vectors and metadata leave the disk. Returns how many rows were dropped."""
        if self.dim is None:
            return 0
        return self.store.compact(min_dead_fraction, include_tail=min_dead_fraction == 0.0)

    # ----- reading

    def preload(self) -> int:
        """Map what a search reads (vectors, camera, time) of every segment into memory, from the disk if
        need be (the segments mapped before are skipped); returns the bytes mapped by this call."""
        if not self.store.exists:
            return 0
        return self.store.populate(["vec", "cam", "ts"])

    def count(self) -> int:
        """Rows in the index."""
        return self.store.snapshot().rows

    def get(self, ids: list[str]) -> list[IndexedDetection]:
        """Detections by id, in the order asked (missing ids are left out)."""
        if self.dim is None or not ids:
            return []
        snap, where = self.store.locate(ids)
        return self._detections(snap, [w for w in where if w is not None])

    def vector(self, det_id: str) -> np.ndarray | None:
        """The stored (L2-normalised) instance vector of one detection."""
        if self.dim is None:
            return None
        snap, (where,) = self.store.locate([det_id])
        if where is None:
            return None
        return np.array(snap.by_id[where[0]].array("vec")[where[1]], dtype=np.float32)

    def all_ids(self, limit: int = 16384) -> list[str]:
        """Detection ids in the index, at most `limit`."""
        out = []
        for key in self.store.live_keys():
            if len(out) >= limit:
                break
            out.append(key)
        return out

    def older_than(
        self,
        ts: float,
        limit: int = 16384,
        cameras: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> list[IndexedDetection]:
        """Detections seen before `ts` (unix seconds), of `cameras` only or of all but `exclude` when given,
        at most `limit` (call again after deleting them)."""
        if not np.isfinite(ts):
            raise ValueError(f"ts must be a finite time, got {ts!r}")
        cameras, _, _ = check_filter(cameras, None, None)
        excluded, _, _ = check_filter(exclude or None, None, None)
        snap = self.store.snapshot()
        code = {c: i for i, c in enumerate(snap.attrs.get("cameras", []))}
        keep = None if cameras is None else [code[c] for c in cameras if c in code]
        drop = [code[c] for c in excluded or [] if c in code]
        return self._detections(snap, self._where(snap, limit, lambda seg: _older(seg, ts, keep, drop)))

    def of_track(
        self, camera: str, track_id: int, id_prefix: str | None = None, limit: int = 4096
    ) -> list[IndexedDetection]:
        """Detections of one local track of a camera (ids starting with `id_prefix` when given: one ingest
        run's), at most `limit` (call again after deleting them)."""
        check_filter(camera, None, None)
        snap = self.store.snapshot()
        code = {c: i for i, c in enumerate(snap.attrs.get("cameras", []))}.get(camera)
        if code is None:
            return []

        def rows(seg: SegmentView) -> np.ndarray:
            mask = (np.asarray(seg.array("cam")) == code) & (np.asarray(seg.array("track")) == int(track_id))
            found = np.flatnonzero(mask)
            if id_prefix is not None and len(found):
                keys = seg.key_array()[found]
                found = found[[k.startswith(id_prefix) for k in keys]]
            return found

        return self._detections(snap, self._where(snap, limit, rows))

    def _where(
        self, snap: Snapshot, limit: int, rows: Callable[[SegmentView], np.ndarray]
    ) -> list[tuple[int, int]]:
        """(segment id, row) of the live rows `rows(segment)` picks, segment by segment, at most `limit`."""
        found: list[tuple[int, int]] = []
        for seg in snap.segments:
            if len(found) >= limit or seg.rows == 0:
                continue
            picked = rows(seg)
            alive = snap.alive(seg)
            if alive is not None:
                picked = picked[alive[picked]]
            found += [(seg.id, int(r)) for r in picked[: limit - len(found)]]
        return found

    def count_by_camera(self, cameras: list[str]) -> dict[str, int]:
        """Rows per camera, for the cameras named."""
        snap = self.store.snapshot()
        code = {c: i for i, c in enumerate(snap.attrs.get("cameras", []))}
        counts = np.zeros(len(code) + 1, np.int64)
        for seg in snap.segments:
            cams = np.asarray(seg.array("cam"))
            alive = snap.alive(seg)
            counts[: len(code)] += np.bincount(cams if alive is None else cams[alive], minlength=len(code))[
                : len(code)
            ]
        return {c: int(counts[code[c]]) if c in code else 0 for c in cameras}

    def search_ids(
        self,
        vector: np.ndarray,
        top_k: int = 10,
        camera: str | list[str] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Candidates:
        """The ids of the `top_k` nearest detections by cosine similarity among those the filter selects,
        best first, and their similarities (exact: every selected row is scored)."""
        cameras, since, until = check_filter(camera, since, until)
        if self.dim is None:
            return Candidates([], np.empty(0, np.float32), [])
        if vector.shape != (self.dim,):
            raise ValueError(f"query vector has shape {vector.shape}, the index holds ({self.dim},)")
        snap = self.store.snapshot()
        q = vector.astype(np.float32)
        q /= max(float(np.linalg.norm(q)), 1e-12)
        known = {c: i for i, c in enumerate(snap.attrs.get("cameras", []))}
        codes = None if cameras is None else sorted({known[c] for c in cameras if c in known})
        lo_t = -np.inf if since is None else since
        hi_t = np.inf if until is None else until
        found: list[tuple[np.ndarray, np.ndarray, int]] = []  # (scores, rows, segment id)
        for seg in snap.segments:
            if codes == [] or seg.rows == 0:
                continue
            t0, t1 = _ts_range(seg)
            if t1 < lo_t or t0 > hi_t:
                continue
            alive = snap.alive(seg)
            if seg.sorted:
                for a, b in _slices(seg, codes, lo_t, hi_t):
                    scores = inner_products(seg.array("vec")[a:b], q)
                    if alive is not None:
                        scores[~alive[a:b]] = -np.inf
                    found.append((*_top(scores, top_k, np.arange(a, b)), seg.id))
            else:
                rows = _tail_rows(seg, codes, lo_t, hi_t, alive)
                if len(rows) > seg.rows // 4:  # most rows: score them all in place, no gather
                    scores = inner_products(seg.array("vec"), q)[rows]
                else:
                    scores = inner_products(seg.array("vec")[rows], q)
                if len(rows):
                    found.append((*_top(scores, top_k, rows), seg.id))
        if not found:
            return Candidates([], np.empty(0, np.float32), [])
        scores = np.concatenate([f[0] for f in found])
        rows = np.concatenate([f[1] for f in found])
        segs = np.concatenate([np.full(len(f[0]), f[2]) for f in found])
        keep = np.isfinite(scores)
        scores, segs, rows = scores[keep], segs[keep], rows[keep]
        if len(scores) > top_k:
            part = np.argpartition(-scores, top_k - 1)[:top_k]
            scores, segs, rows = scores[part], segs[part], rows[part]
        order = np.lexsort((rows, segs, -scores))
        segs, rows = segs[order], rows[order]
        ids = np.empty(len(order), object)
        for sid in np.unique(segs).tolist():
            at = segs == sid
            ids[at] = snap.by_id[sid].key_array()[rows[at]]
        model = snap.attrs.get("model") or ""
        return Candidates(ids.tolist(), scores[order].astype(np.float32), [model] * len(ids))

    def search(
        self,
        vector: np.ndarray,
        top_k: int = 10,
        camera: str | list[str] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[IndexedDetection]:
        """Nearest detections by cosine similarity, optionally filtered by camera(s) and time range."""
        found = self.search_ids(vector, top_k, camera, since, until)
        score = dict(zip(found.ids, found.scores.tolist(), strict=True))
        return [replace(h, score=score[h.detection_id]) for h in self.get(found.ids)]

    def close(self) -> None:
        """Drop the memory maps."""
        self.store.close()

    def _detections(self, snap: Snapshot, where: list[tuple[int, int]]) -> list[IndexedDetection]:
        """The detections at these (segment id, row) places, in order: one read per segment and column."""
        cameras = snap.attrs.get("cameras", [])
        model = snap.attrs.get("model") or ""
        out: list[IndexedDetection | None] = [None] * len(where)
        segs = np.array([w[0] for w in where], np.int64)
        rows = np.array([w[1] for w in where], np.int64)
        for sid in np.unique(segs).tolist():
            at = np.flatnonzero(segs == sid)
            seg, r = snap.by_id[sid], rows[at]
            col = {
                name: seg.array(name)[r].tolist()
                for name in ("cam", "ts", "frame", "track", "box", "score", "read_at", "indexed_at")
            }
            items, lengths = seg.ragged_rows("thumb", r)
            blob, ends = np.asarray(items).tobytes(), np.cumsum(lengths).tolist()
            thumbs = [blob[a:b].decode() for a, b in zip([0, *ends[:-1]], ends, strict=True)]
            keys = seg.key_array()[r].tolist()
            for j, i in enumerate(at.tolist()):
                out[i] = IndexedDetection(
                    detection_id=keys[j],
                    camera_id=cameras[col["cam"][j]],
                    timestamp=col["ts"][j],
                    frame_index=col["frame"][j],
                    track_id=col["track"][j],
                    box=tuple(col["box"][j]),
                    det_score=col["score"][j],
                    thumbnail=thumbs[j],
                    model=model,
                    read_at=col["read_at"][j],
                    indexed_at=col["indexed_at"][j],
                )
        return out  # type: ignore[return-value]


def _older(seg: SegmentView, ts: float, keep: list[int] | None, drop: list[int]) -> np.ndarray:
    """The rows of a segment seen before `ts`, of the cameras `keep` (None: all) but not `drop`."""
    if _ts_range(seg)[0] >= ts:
        return np.empty(0, np.int64)
    mask = np.asarray(seg.array("ts")) < ts
    cams = np.asarray(seg.array("cam"))
    if keep is not None:
        mask &= np.isin(cams, keep)
    if drop:
        mask &= ~np.isin(cams, drop)
    return np.flatnonzero(mask)


def _ts_range(seg: SegmentView) -> tuple[float, float]:
    """The segment's earliest and latest time (a zone map: segments outside a time filter are skipped)."""
    if "ts_range" not in seg.cache:
        ts = np.asarray(seg.array("ts"))
        seg.cache["ts_range"] = (float(ts.min()), float(ts.max())) if len(ts) else (np.inf, -np.inf)
    return seg.cache["ts_range"]  # type: ignore[return-value]


def _slices(seg: SegmentView, codes: list[int] | None, lo_t: float, hi_t: float) -> list[tuple[int, int]]:
    """The contiguous row ranges of a sorted segment that hold the cameras' rows within [lo_t, hi_t]."""
    if "cam_bounds" not in seg.cache:
        cams = np.asarray(seg.array("cam"))
        present = np.unique(cams)
        starts = np.searchsorted(cams, present, "left")
        ends = np.searchsorted(cams, present, "right")
        seg.cache["cam_bounds"] = {
            int(c): (int(a), int(b)) for c, a, b in zip(present, starts, ends, strict=True)
        }
    bounds: dict[int, tuple[int, int]] = seg.cache["cam_bounds"]  # type: ignore[assignment]
    ts = seg.array("ts")
    out = []
    for c in bounds if codes is None else codes:
        if c not in bounds:
            continue
        a, b = bounds[c]
        if lo_t > -np.inf:
            a = a + int(np.searchsorted(ts[a:b], lo_t, "left"))
        if hi_t < np.inf:
            b = a + int(np.searchsorted(ts[a:b], hi_t, "right"))
        if b > a:
            out.append((a, b))
    return out


def _tail_rows(
    seg: SegmentView, codes: list[int] | None, lo_t: float, hi_t: float, alive: np.ndarray | None
) -> np.ndarray:
    """The rows of an unsorted segment that the filter selects."""
    mask = np.ones(seg.rows, bool) if alive is None else alive.copy()
    if codes is not None:
        mask &= np.isin(np.asarray(seg.array("cam")), codes)
    if lo_t > -np.inf or hi_t < np.inf:
        ts = np.asarray(seg.array("ts"))
        mask &= (ts >= lo_t) & (ts <= hi_t)
    return np.flatnonzero(mask)


def inner_products(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    """vectors @ q for float32 rows, with FAISS's SIMD kernel (several times faster than numpy's BLAS
    matrix-vector product here: BENCHMARKS.md, Index)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.empty(len(vectors), np.float32)
    if len(vectors):
        faiss.fvec_inner_products_ny(
            faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(vectors), len(q), len(vectors)
        )
    return out


def _top(scores: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The best k of one slice (unordered) and their rows."""
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        return scores[part], rows[part]
    return scores, rows
