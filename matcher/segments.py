"""Append-only segments with an atomic manifest: the files under the embedded index and the feature store.

A store is a folder:

    MANIFEST.json              the commit: the column schema, the segments and their row counts, the
                               tombstones' count, the owner's attributes (model, vector size, ...)
    LOCK                       held (flock) by whichever process is committing, for that commit only
    seg-000001/<column>.bin    one file per column; a ragged column (a variable number of items per row,
                               e.g. pixel features) has <column>.bin (the items) and <column>.end (int64:
                               where each row's items end)
    tomb-000001.bin            (segment id, row) int64 pairs: deleted rows

Rows are only appended, to the newest segment (the tail). A write appends to the column files, fsyncs them,
then replaces MANIFEST.json atomically (write a temporary file, fsync, rename, fsync the folder): that
rename is the commit. Readers read only up to the counts in the manifest, so bytes past them (a write in
progress, a crash, a full disk) are never seen; the next writer truncates them. A failed write (a full
disk) raises, truncates what it appended and leaves every committed row as it was.

Every row has a unique key (the detection id): writing a key again deletes its older row in the same commit
(idempotent), and `write(delete=...)` deletes by key. A full tail is sealed: rewritten in the order the owner
asks for (the index sorts by camera and time, so that a filter selects contiguous rows) or simply closed.
`compact` rewrites segments without their deleted rows: that is when deleted data leaves the disk.

Any number of processes may read and write one store: every commit takes the lock, catches up with what
others committed, and writes; a reader sees each commit whole or not at all (`snapshot`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matcher.page_advice import populate, will_need
from pgr.errors import IndexMismatch, IndexUnavailable

FORMAT = "pgr-segments/1"
MANIFEST = "MANIFEST.json"
KEY = "key"  # the ragged utf-8 column every store has: the row's unique key
_KEY_COLUMN = {"name": KEY, "dtype": "|u1", "shape": [], "ragged": True}


@dataclass(frozen=True)
class Column:
    """One column: a fixed `shape` per row, or (`ragged`) a variable number of items of `shape` per row."""

    name: str
    dtype: str  # a numpy dtype string, e.g. "<f4"
    shape: tuple[int, ...] = ()
    ragged: bool = False

    def describe(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "ragged": self.ragged}

    @classmethod
    def parse(cls, d: dict) -> Column:
        return cls(d["name"], d["dtype"], tuple(d["shape"]), bool(d["ragged"]))

    @property
    def item_bytes(self) -> int:
        return np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64))


def _map(path: Path, dtype: str, shape: tuple[int, ...], count: int) -> np.ndarray:
    """The first `count` items of a column file, memory-mapped read-only (an empty array for none)."""
    if count == 0:
        return np.empty((0, *shape), dtype=dtype)
    items = count * int(np.prod(shape, dtype=np.int64))
    try:
        # mmap + frombuffer: a plain ndarray over the map, a third of np.memmap's cost to open (a writer
        # maps its tail's every column again after each commit)
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), items * np.dtype(dtype).itemsize, access=mmap.ACCESS_READ)
    except ValueError:  # "mmap length is greater than file size"
        raise IndexUnavailable(
            f"{path} holds fewer rows than its manifest says: the store is damaged (restore it from a "
            "backup, or index the footage again)"
        ) from None
    return np.frombuffer(m, dtype=dtype, count=items).reshape(count, *shape)


def _mapping(arr: np.ndarray) -> tuple[mmap.mmap | None, int]:
    """The memory map under a column array from `_map` and its address (a column maps from offset 0);
    (None, 0) for an empty column, which has no map."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if not isinstance(base, mmap.mmap):
        return None, 0
    return base, arr.__array_interface__["data"][0]


class SegmentView:
    """The committed rows of one segment, memory-mapped; immutable (a longer tail is a new view)."""

    def __init__(
        self, root: Path, entry: dict, columns: dict[str, Column], inherit: SegmentView | None = None
    ) -> None:
        self.id, self.rows = int(entry["id"]), int(entry["rows"])
        self.sorted, self.open = bool(entry.get("sorted", False)), bool(entry.get("open", False))
        self.path = root / segment_dir(self.id)
        self.columns = columns
        self._arrays: dict[str, np.ndarray] = {}
        self._ends: dict[str, np.ndarray] = {}
        for c in columns.values():  # map now: the files may be unlinked (compaction) while this view lives
            if c.ragged:
                ends = _map(self.path / f"{c.name}.end", "<i8", (), self.rows)
                self._ends[c.name] = ends
                items = int(ends[-1]) if self.rows else 0
                self._arrays[c.name] = _map(self.path / f"{c.name}.bin", c.dtype, c.shape, items)
            else:
                self._arrays[c.name] = _map(self.path / f"{c.name}.bin", c.dtype, c.shape, self.rows)
        self.cache: dict[str, object] = {}  # what owners derive from the rows (per view, so never stale)
        if inherit is not None and "keys" in inherit.cache:  # a longer tail: decode only the new keys
            self._keys_base: list[str] = inherit.cache["keys"]  # type: ignore[assignment]
        else:
            self._keys_base = []

    def array(self, name: str) -> np.ndarray:
        """A fixed column (rows, *shape), or a ragged column's items (items, *shape)."""
        return self._arrays[name]

    def prefetch(self, name: str, starts: np.ndarray, stops: np.ndarray) -> None:
        """Ask the kernel to read items [start, stop) of a column ahead (`page_advice.will_need`):
        rows scattered over a file not in the page cache then come from the disk in parallel, not one page
        fault after another."""
        arr = self._arrays[name]
        m, address = _mapping(arr)
        if m is not None:
            item = arr.strides[0]
            will_need(m, address, starts * item, stops * item)

    def populate(self, names: Iterable[str]) -> int:
        """Map every page of these columns into the process now (`page_advice.populate`); returns their
        bytes."""
        done = 0
        for name in names:
            m, address = _mapping(self._arrays[name])
            if m is not None:
                populate(m, address)
                done += len(m)
        return done

    def release_pages(self) -> None:
        """Unmap this view's pages from the process (MADV_DONTNEED; the next read faults them in again), so
        that the kernel may drop them from the page cache (benchmarks: to measure reads from the disk)."""
        for arr in [*self._arrays.values(), *self._ends.values()]:
            m, _ = _mapping(arr)
            if m is not None and hasattr(mmap, "MADV_DONTNEED"):
                m.madvise(mmap.MADV_DONTNEED)

    def ends(self, name: str) -> np.ndarray:
        """Where each row's items of a ragged column end (rows,)."""
        return self._ends[name]

    def ragged_rows(self, name: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The items of `rows` of a ragged column, concatenated, and how many each row has."""
        ends = self._ends[name]
        rows = np.asarray(rows, dtype=np.int64)
        stop = ends[rows]
        start = np.where(rows > 0, ends[np.maximum(rows - 1, 0)], 0)
        lengths = stop - start
        if len(rows) == 0 or lengths.sum() == 0:
            return self._arrays[name][:0], lengths
        # one gather: item index = start of its row + position within the row
        offsets = np.repeat(start - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        idx = offsets + np.arange(int(lengths.sum()), dtype=np.int64)
        return self._arrays[name][idx], lengths

    def key_array(self) -> np.ndarray:
        """`keys` as a numpy object array (to pick many by row at once)."""
        if "key_array" not in self.cache:
            self.cache["key_array"] = np.array(self.keys(), dtype=object)
        return self.cache["key_array"]  # type: ignore[return-value]

    def keys(self) -> list[str]:
        """Every row's key, in row order (decoded once per view)."""
        if "keys" not in self.cache:
            first = len(self._keys_base)
            start = int(self._ends[KEY][first - 1]) if first else 0
            ends = (self._ends[KEY][first:] - start).tolist()
            blob = np.asarray(self._arrays[KEY][start:]).tobytes()
            new = [blob[a:b].decode() for a, b in zip([0, *ends[:-1]], ends, strict=False)]
            self.cache["keys"] = self._keys_base + new
            self._keys_base = []
        return self.cache["keys"]  # type: ignore[return-value]


@dataclass(frozen=True)
class Snapshot:
    """A committed state: the segments in order and, per segment id, its deleted rows (None: none)."""

    version: int
    segments: tuple[SegmentView, ...]
    dead: dict[int, np.ndarray | None]
    attrs: dict
    by_id: dict[int, SegmentView] = field(default_factory=dict)

    def alive(self, seg: SegmentView) -> np.ndarray | None:
        """A bool mask of the segment's live rows, or None when all are alive."""
        dead = self.dead.get(seg.id)
        return None if dead is None else ~dead

    @property
    def rows(self) -> int:
        """Live rows."""
        return sum(
            s.rows - (0 if self.dead[s.id] is None else int(self.dead[s.id].sum())) for s in self.segments
        )


def segment_dir(seg_id: int) -> str:
    return f"seg-{seg_id:06d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class SegmentStore:
    """A folder of append-only segments (see the module doc). Thread-safe; any number of processes."""

    def __init__(
        self,
        root: Path,
        kind: str,
        tail_rows: int = 65536,
        seal_order: Callable[[SegmentView, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.root, self.kind, self.tail_rows, self.seal_order = Path(root), kind, tail_rows, seal_order
        self._lock = threading.RLock()
        self._depth = 0  # transaction nesting of the thread holding _lock
        self._token: tuple | None = None  # (inode, mtime, size) of the manifest this state reflects
        self._manifest: dict | None = None
        self._views: dict[int, SegmentView] = {}
        self._dead: dict[int, np.ndarray | None] = {}
        self._where: dict[str, tuple[int, int]] = {}  # key -> (segment id, row) of its live row
        self._snapshot = Snapshot(0, (), {}, {})
        self._populated: dict[int, int] = {}  # segment id -> rows mapped by `populate`
        self.refresh()

    # ----- reading

    @property
    def exists(self) -> bool:
        return self._manifest is not None

    @property
    def columns(self) -> dict[str, Column]:
        if self._manifest is None:
            return {}
        return {c["name"]: Column.parse(c) for c in self._manifest["columns"]}

    @property
    def attrs(self) -> dict:
        return dict(self._manifest["attrs"]) if self._manifest else {}

    def snapshot(self) -> Snapshot:
        """The latest committed state (re-read when another process committed since)."""
        self.refresh()
        return self._snapshot

    def populate(self, names: Sequence[str]) -> int:
        """Map these columns of every segment not mapped so far (the tail again when it grew) into the
        process: searches then never wait for the disk. Returns the bytes mapped by this call."""
        done = 0
        for seg in self.snapshot().segments:
            if self._populated.get(seg.id) != seg.rows:
                done += seg.populate(names)
                self._populated[seg.id] = seg.rows
        return done

    def locate(self, keys: Iterable[str]) -> tuple[Snapshot, list[tuple[int, int] | None]]:
        """A snapshot and, per key, its live row there ((segment id, row)) or None."""
        with self._lock:
            self.refresh()
            return self._snapshot, [self._where.get(k) for k in keys]

    def live_keys(self) -> Iterator[str]:
        """Every live key, segment by segment."""
        snap = self.snapshot()
        for seg in snap.segments:
            alive = snap.alive(seg)
            keys = seg.keys()
            yield from (keys if alive is None else (keys[i] for i in np.flatnonzero(alive)))

    def refresh(self) -> None:
        """Catch up with the manifest on disk, if it changed (cheap when it did not: one stat)."""
        with self._lock:
            for attempt in range(5):
                try:
                    token = self._stat()
                    if token == self._token:
                        return
                    manifest = self._read_manifest()
                    if manifest is None:
                        self._token = token
                        return
                    self._apply(manifest)
                    self._token = token
                    return
                except FileNotFoundError:  # a segment compacted away between reading the manifest and
                    if attempt == 4:  # mapping its files: read the newer manifest
                        raise

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.root / MANIFEST)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read_manifest(self) -> dict | None:
        path = self.root / MANIFEST
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            manifest = json.loads(text)
            ok = manifest.get("format") == FORMAT and isinstance(manifest.get("segments"), list)
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise IndexUnavailable(f"{path} is not a {FORMAT} manifest (unreadable or of another format)")
        if manifest.get("kind") != self.kind:
            raise IndexMismatch(
                f"{self.root} holds a {manifest.get('kind')!r} store, not a {self.kind!r} one"
            )
        return manifest

    def _apply(self, manifest: dict) -> None:
        """Move this state to `manifest`: map new and longer segments, apply tombstones, update the keys.
        Every file is read before any state changes, so a FileNotFoundError leaves the old state whole."""
        columns = {c["name"]: Column.parse(c) for c in manifest["columns"]}
        old = self._manifest
        if old is not None and old["columns"] != manifest["columns"]:
            raise IndexMismatch(f"{self.root}: the column schema changed under a reader")
        views: dict[int, SegmentView] = {}
        seen: dict[int, int] = {}  # segment id -> rows this state already knew
        for entry in manifest["segments"]:
            sid = int(entry["id"])
            have = self._views.get(sid)
            if have is not None and have.rows == int(entry["rows"]) and have.open == bool(entry.get("open")):
                views[sid] = have
            else:
                views[sid] = SegmentView(self.root, entry, columns, inherit=have)
            seen[sid] = have.rows if have is not None else 0
        tomb, old_tomb = manifest["tombstones"], (old or {}).get("tombstones", {})
        restart = tomb.get("file") != old_tomb.get("file")
        pairs = self._read_tombstones(tomb, 0 if restart else int(old_tomb.get("count", 0)))
        dead: dict[int, np.ndarray | None] = {}
        for sid, view in views.items():
            prev = None if restart else self._dead.get(sid)
            if prev is not None and len(prev) < view.rows:
                prev = np.concatenate([prev, np.zeros(view.rows - len(prev), bool)])
            dead[sid] = prev
        for sid, row in pairs:
            view = views.get(sid)
            if view is None or row >= view.rows:
                continue  # a segment sealed or compacted since: the row went with it
            if dead[sid] is None or dead[sid] is self._dead.get(sid):
                dead[sid] = np.zeros(view.rows, bool) if dead[sid] is None else dead[sid].copy()
            dead[sid][row] = True
        keys = {sid: view.keys() for sid, view in views.items()}  # decoded before anything changes
        # keys: forget the rows of gone segments and rows newly dead, then add the live rows not seen before
        where = self._where
        for sid, view in self._views.items():
            if sid not in views:
                for row, key in enumerate(view.keys()):
                    if where.get(key) == (sid, row):
                        del where[key]
        for sid, view in views.items():
            now, before, known = dead[sid], self._dead.get(sid), seen[sid]
            if known and now is not None and now is not before:
                was = np.zeros(known, bool) if before is None else before[:known]
                for row in np.flatnonzero(now[:known] & ~was).tolist():
                    if where.get(keys[sid][row]) == (sid, row):
                        del where[keys[sid][row]]
            for row in range(known, view.rows):
                if now is None or not now[row]:
                    where[keys[sid][row]] = (sid, row)
        order = tuple(views[int(e["id"])] for e in manifest["segments"])
        self._views, self._dead, self._manifest = views, dead, manifest
        self._snapshot = Snapshot(
            int(manifest["version"]), order, dict(dead), dict(manifest["attrs"]), {v.id: v for v in order}
        )

    def _read_tombstones(self, tomb: dict, first: int) -> list[tuple[int, int]]:
        count = int(tomb.get("count", 0))
        if count <= first or not tomb.get("file"):
            return []
        pairs = np.fromfile(self.root / tomb["file"], dtype="<i8", count=2 * count)
        if len(pairs) < 2 * count:
            raise IndexUnavailable(f"{self.root / tomb['file']} is shorter than its manifest says")
        return [(int(s), int(r)) for s, r in pairs.reshape(-1, 2)[first:count]]

    # ----- writing

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the thread lock and the folder's LOCK, caught up with the latest commit: what the caller
        reads inside (e.g. `attrs`) stays true for the writes it makes inside. Re-entrant."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self.root.mkdir(parents=True, exist_ok=True)
            with (self.root / "LOCK").open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._depth = 1
                try:
                    self.refresh()
                    yield
                finally:
                    self._depth = 0
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def create(self, columns: Sequence[Column], attrs: dict) -> None:
        """Create the store with these columns (the key column is added) unless it exists; attributes are the
        owner's (model, vector size): it compares them itself when the store exists."""
        with self.transaction():
            if self._manifest is not None:
                return
            manifest = {
                "format": FORMAT,
                "kind": self.kind,
                "version": 0,
                "columns": [_KEY_COLUMN, *(c.describe() for c in columns)],
                "attrs": attrs,
                "segments": [],
                "tombstones": {"file": None, "count": 0},
                "next_id": 1,
            }
            self._commit(manifest)

    def write(
        self,
        keys: Sequence[str] = (),
        columns: dict[str, np.ndarray | Sequence[np.ndarray]] | None = None,
        delete: Iterable[str] = (),
        attrs: dict | None = None,
    ) -> int:
        """Append rows (`keys` and a value per column: an array of len(keys) rows, or for a ragged column a
        list of item arrays), delete rows by key, and update attributes, in one commit. A key already
        present loses its older row. Returns how many of the `delete` keys were present. Raises OSError
        (ENOSPC, EIO) with nothing of this write visible and every earlier commit intact."""
        written = set(keys)
        if len(written) != len(keys):
            raise ValueError("a write names a key twice")
        delete = [k for k in delete if k not in written]
        with self.transaction():
            if self._manifest is None:
                raise IndexUnavailable(f"{self.root} has no store yet: create it first")
            manifest = json.loads(json.dumps(self._manifest))
            schema = {c["name"]: Column.parse(c) for c in manifest["columns"]}
            doomed = [self._where[k] for k in [*keys, *delete] if k in self._where]
            present = sum(1 for k in delete if k in self._where)
            if not keys and not doomed and attrs is None:
                return 0
            appended: list[tuple[Path, int]] = []  # (file, size before): truncated again if this fails
            try:
                if keys:
                    data = self._encode(schema, keys, columns or {})
                    tail = self._tail(manifest)
                    self._append_rows(tail, schema, data, len(keys), appended)
                    tail["rows"] += len(keys)
                if doomed:
                    self._append_tombstones(manifest, doomed, appended)
                if attrs is not None:
                    manifest["attrs"] = {**manifest["attrs"], **attrs}
                self._commit(manifest)
            except BaseException:
                for path, size in appended:
                    with contextlib.suppress(OSError):
                        os.truncate(path, size)
                raise
            last = manifest["segments"][-1] if manifest["segments"] else None
            if last is not None and last.get("open") and last["rows"] >= self.tail_rows:
                self._seal()
            return present

    def _encode(self, schema: dict[str, Column], keys: Sequence[str], columns: dict) -> dict[str, tuple]:
        """Each column's bytes to append: (items bytes, per-row item counts or None)."""
        missing = set(schema) - {KEY} - set(columns)
        extra = set(columns) - set(schema)
        if missing or extra:
            raise ValueError(f"columns missing {sorted(missing)}, unknown {sorted(extra)}")
        n = len(keys)
        out = {KEY: self._ragged_bytes(schema[KEY], [np.frombuffer(k.encode(), np.uint8) for k in keys])}
        for name, col in schema.items():
            if name == KEY:
                continue
            value = columns[name]
            if col.ragged:
                if len(value) != n:
                    raise ValueError(f"column {name}: {len(value)} rows for {n} keys")
                out[name] = self._ragged_bytes(col, value)
            else:
                arr = np.asarray(value)
                if arr.shape != (n, *col.shape):
                    raise ValueError(
                        f"column {name} has shape {arr.shape}, the store holds ({n}, {col.shape})"
                    )
                out[name] = (np.ascontiguousarray(arr, dtype=col.dtype).tobytes(), None)
        return out

    @staticmethod
    def _ragged_bytes(col: Column, items: Sequence[np.ndarray]) -> tuple[bytes, np.ndarray]:
        lengths = np.zeros(len(items), np.int64)
        parts = []
        for i, a in enumerate(items):
            a = np.asarray(a)
            if a.shape[1:] != col.shape:
                raise ValueError(
                    f"column {col.name}: items of shape {a.shape[1:]}, the store holds {col.shape}"
                )
            lengths[i] = len(a)
            parts.append(np.ascontiguousarray(a, dtype=col.dtype).tobytes())
        return b"".join(parts), lengths

    def _tail(self, manifest: dict) -> dict:
        """The open tail segment's entry, created (empty files) when there is none."""
        segs = manifest["segments"]
        if segs and segs[-1].get("open"):
            return segs[-1]
        sid = manifest["next_id"]
        manifest["next_id"] += 1
        path = self.root / segment_dir(sid)
        shutil.rmtree(path, ignore_errors=True)  # left by a crash before its commit
        path.mkdir()
        for c in (Column.parse(c) for c in manifest["columns"]):
            (path / f"{c.name}.bin").touch()
            if c.ragged:
                (path / f"{c.name}.end").touch()
        _fsync_dir(path)
        _fsync_dir(self.root)
        entry = {"id": sid, "rows": 0, "sorted": False, "open": True}
        segs.append(entry)
        return entry

    def _append_rows(
        self, tail: dict, schema: dict[str, Column], data: dict, n: int, appended: list[tuple[Path, int]]
    ) -> None:
        path = self.root / segment_dir(tail["id"])
        view = self._views.get(tail["id"])
        rows = tail["rows"]
        for name, col in schema.items():
            blob, lengths = data[name]
            files = [(path / f"{name}.bin", blob)]
            if col.ragged:
                before = int(view.ends(name)[-1]) if view is not None and rows else 0
                files.append((path / f"{name}.end", (before + np.cumsum(lengths)).astype("<i8").tobytes()))
                committed = {files[0][0]: before * col.item_bytes, files[1][0]: rows * 8}
            else:
                committed = {files[0][0]: rows * col.item_bytes}
            for file, payload in files:
                size = committed[file]
                with file.open("r+b") as f:
                    f.truncate(size)  # bytes past the commit: a crashed or failed earlier write
                    f.seek(size)
                    appended.append((file, size))
                    f.write(payload)
                    f.flush()
                    os.fsync(f.fileno())

    def _append_tombstones(self, manifest: dict, doomed: list[tuple[int, int]], appended: list) -> None:
        tomb = manifest["tombstones"]
        if not tomb["file"]:
            tomb["file"] = f"tomb-{manifest['next_id']:06d}.bin"
            manifest["next_id"] += 1
        path = self.root / tomb["file"]
        path.touch()
        size = int(tomb["count"]) * 16
        with path.open("r+b") as f:
            f.truncate(size)
            f.seek(size)
            appended.append((path, size))
            f.write(np.asarray(doomed, dtype="<i8").tobytes())
            f.flush()
            os.fsync(f.fileno())
        tomb["count"] += len(doomed)

    def _commit(self, manifest: dict) -> None:
        manifest["version"] = int(manifest.get("version", 0)) + 1
        tmp = self.root / f".{MANIFEST}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            _write_file(tmp, json.dumps(manifest, indent=1).encode())
            os.replace(tmp, self.root / MANIFEST)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.root)
        self.refresh()

    def _seal(self) -> None:
        """Close the full tail: rewritten in the owner's order without its deleted rows, or (no order, no
        deleted rows) just marked closed."""
        tail = self._snapshot.segments[-1]
        if self.seal_order is None and self._snapshot.dead.get(tail.id) is None:
            manifest = json.loads(json.dumps(self._manifest))
            manifest["segments"][-1]["open"] = False
            self._commit(manifest)
            return
        self._rewrite([tail], order=self.seal_order)

    def compact(self, min_dead_fraction: float = 0.25, include_tail: bool = False) -> int:
        """Rewrite every segment with at least this fraction of deleted rows without them (and, with
        `include_tail`, the tail when it holds any, closing it): deleted data then leave the disk.
        Returns how many deleted rows were dropped."""
        with self.transaction():
            snap = self._snapshot
            picked = []
            for seg in snap.segments:
                dead = snap.dead.get(seg.id)
                n_dead = 0 if dead is None else int(dead.sum())
                if n_dead and (n_dead >= min_dead_fraction * seg.rows or (seg.open and include_tail)):
                    picked.append(seg)
            if not picked:
                return 0
            dropped = sum(int(snap.dead[s.id].sum()) for s in picked if snap.dead.get(s.id) is not None)
            self._rewrite(picked, order=None)
            return dropped

    def _rewrite(self, segs: list[SegmentView], order: Callable | None) -> None:
        """Replace segments by copies of their live rows (closed; sorted by `order` when given)."""
        manifest = json.loads(json.dumps(self._manifest))
        schema = {c["name"]: Column.parse(c) for c in manifest["columns"]}
        replaced: dict[int, dict | None] = {}
        for seg in segs:
            alive = self._snapshot.alive(seg)
            rows = np.arange(seg.rows) if alive is None else np.flatnonzero(alive)
            if order is not None and len(rows):
                rows = order(seg, rows)
            if len(rows) == 0:
                replaced[seg.id] = None
                continue
            sid = manifest["next_id"]
            manifest["next_id"] += 1
            path = self.root / segment_dir(sid)
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            for name, col in schema.items():
                if col.ragged:
                    items, lengths = seg.ragged_rows(name, rows)
                    _write_file(path / f"{name}.bin", np.ascontiguousarray(items).tobytes())
                    _write_file(path / f"{name}.end", np.cumsum(lengths).astype("<i8").tobytes())
                else:
                    _write_file(path / f"{name}.bin", np.ascontiguousarray(seg.array(name)[rows]).tobytes())
            _fsync_dir(path)
            replaced[seg.id] = {"id": sid, "rows": len(rows), "sorted": order is not None or seg.sorted}
        _fsync_dir(self.root)
        entries = []
        for e in manifest["segments"]:
            if int(e["id"]) in replaced:
                if replaced[int(e["id"])] is not None:
                    entries.append(replaced[int(e["id"])])
            else:
                entries.append(e)
        manifest["segments"] = entries
        # the tombstones of the rewritten segments are spent: start a new file with the others
        live = {int(e["id"]) for e in entries}
        old_tomb = manifest["tombstones"]
        keep = [p for p in self._read_tombstones(old_tomb, 0) if p[0] in live and p[0] not in replaced]
        name = f"tomb-{manifest['next_id']:06d}.bin"
        manifest["next_id"] += 1
        _write_file(self.root / name, np.asarray(keep, dtype="<i8").reshape(-1, 2).tobytes())
        manifest["tombstones"] = {"file": name, "count": len(keep)}
        self._commit(manifest)
        for sid in replaced:
            shutil.rmtree(self.root / segment_dir(sid), ignore_errors=True)
        if old_tomb.get("file"):
            (self.root / old_tomb["file"]).unlink(missing_ok=True)

    def close(self) -> None:
        """Drop the memory maps (the store can be opened again)."""
        with self._lock:
            self._views, self._dead, self._where = {}, {}, {}
            self._snapshot = Snapshot(0, (), {}, {})
            self._manifest, self._token = None, None
