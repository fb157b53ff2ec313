"""The identity state on disk (one SQLite file): tracklets with their kept crops, who belongs to whom, the
matcher's counters and every identity event. Written in one transaction per matcher batch, before the
batch's offsets are committed, so a restarted matcher goes on from where it stopped and a redelivered
record finds its crop already counted.

Reading is a plain function of the file (`list_identities`, `timeline`), for `pgr identities`, `pgr identity`
and the operator app:

>>> store = IdentityStore(Path("var/embedded/identities.sqlite"))  # doctest: +SKIP
>>> for entry in timeline(store, "id:cam1:t7"):  # doctest: +SKIP
...     print(entry.camera_id, entry.first_seen, entry.last_seen, entry.thumbnail)
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matcher.forget import forget_detections_in_memory, forget_expired_in_memory, forget_in_memory
from matcher.identities import IdentityBook
from matcher.tombstones import SCHEMA as TOMBSTONES_SCHEMA
from matcher.tombstones import erased_since
from matcher.tracklets import (
    KeptCrop,
    Tracklet,
    TrackletBook,
    features_from_bytes,
    features_to_bytes,
)
from pgr.messages import Detection, IdentityEvent, decode_identity, encode_identity, track_key

if TYPE_CHECKING:
    from matcher.index import IndexedDetection

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracklets (
    tracklet_id TEXT PRIMARY KEY, camera_id TEXT NOT NULL, identity_id TEXT, first_seen REAL NOT NULL,
    last_seen REAL NOT NULL, n_crops INTEGER NOT NULL, thumbnail TEXT NOT NULL, meta TEXT NOT NULL,
    feature BLOB NOT NULL, crops BLOB);
CREATE INDEX IF NOT EXISTS tracklets_identity ON tracklets(identity_id);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, identity_id TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# a tracklet's row; its kept crops' features are written only when they changed (else NULL keeps them)
_UPSERT = """
INSERT INTO tracklets VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(tracklet_id) DO UPDATE SET
    identity_id = excluded.identity_id, first_seen = excluded.first_seen, last_seen = excluded.last_seen,
    n_crops = excluded.n_crops, thumbnail = excluded.thumbnail, meta = excluded.meta,
    feature = excluded.feature, crops = COALESCE(excluded.crops, tracklets.crops)
"""


class IdentityStore:
    """One SQLite file; one writer (the matcher) and any number of readers."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # an erasure holds the write lock while it deletes (matcher/forget.py): wait for it rather than fail
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA + TOMBSTONES_SCHEMA)
        self.erasures_seen = 0  # the last erasure request this writer's books have applied

    def close(self) -> None:
        self.db.close()

    def save(self, book: TrackletBook, identities: IdentityBook, events: list[IdentityEvent]) -> None:
        """Write the tracklets changed since the last save, the memberships, counters and `events`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")  # the write lock first: no erasure commits until this does
            events = self._forget_erased(book, identities, events)
            state = {
                "seq": identities.seq,
                "members": identities.members,
                "current": book.current,
                "segments": dict(book.segments),
                "camera_time": book.camera_time,
                "counts": dict(book.counts),
                "open": sorted(book.open),
                "horizon": book.horizon if math.isfinite(book.horizon) else None,
            }
            for tid in sorted(book.dirty):
                t = book.tracklets[tid]
                meta = {
                    "track_id": t.track_id,
                    "last_frame": t.last_frame,
                    "weight_sum": t.weight_sum,
                    "seen": sorted(t.seen),
                    "arrived_at": t.arrived_at,
                    "read_at": t.read_at,
                    "ended": t.ended,
                    "decided": t.decided,
                    "best": [[c.detection_id, c.timestamp, c.quality, c.thumbnail] for c in t.best],
                }
                self.db.execute(
                    _UPSERT,
                    (
                        tid,
                        t.camera_id,
                        identities.owner.get(tid),
                        t.first_seen,
                        t.last_seen,
                        t.n_crops,
                        t.thumbnail,
                        json.dumps(meta),
                        t.feature_sum.astype(np.float64).tobytes(),
                        features_to_bytes(t.best) if t.best and t.best_changed else None,
                    ),
                )
                t.best_changed = False
            for ident in {e.identity_id for e in events}:  # ownership moves with merges and moves
                self.db.executemany(
                    "UPDATE tracklets SET identity_id = ? WHERE tracklet_id = ?",
                    [(ident, m) for m in identities.members.get(ident, [])],
                )
            self.db.executemany(
                "INSERT OR REPLACE INTO events VALUES (?,?,?)",
                [(e.seq, e.identity_id, encode_identity(e)) for e in events],
            )
            self.db.execute("INSERT OR REPLACE INTO state VALUES ('book', ?)", (json.dumps(state),))
        book.dirty.clear()

    def apply_erasures(self, book: TrackletBook, identities: IdentityBook) -> None:
        """Forget in the books what erasures and retention runs deleted since they last looked (call before
        deciding: a tracklet must never join an identity that was erased meanwhile); `save` looks again
        under the write lock for any that commit in between."""
        self._forget_erased(book, identities, [])

    def _forget_erased(
        self, book: TrackletBook, identities: IdentityBook, events: list[IdentityEvent]
    ) -> list[IdentityEvent]:
        """Drop from the books what erasures and retention runs since the last save deleted from this file
        (each commits its deletions and its request together: matcher/forget.py), and the events about it."""
        pending = erased_since(self.db, self.erasures_seen)
        self.erasures_seen = pending.last
        gone, emptied = forget_in_memory(book, identities, pending.tracks)
        forget_detections_in_memory(book, pending.detections)
        for cutoffs in pending.cutoffs:
            expired, emptied_now = forget_expired_in_memory(book, identities, cutoffs)
            gone, emptied = gone | expired, emptied | emptied_now
        return [e for e in events if e.tracklet_id not in gone and e.identity_id not in emptied]

    def load(self, book: TrackletBook, identities: IdentityBook) -> None:
        """Restore what `save` wrote into empty books: the tracklets in memory when it was written (those
        evicted stay on disk only)."""
        row = self.db.execute("SELECT value FROM state WHERE key = 'book'").fetchone()
        if row is None:
            return
        state = json.loads(row[0])
        members = {k: list(v) for k, v in state["members"].items()}
        wanted = {m for ms in members.values() for m in ms} | set(state["current"].values())
        wanted |= set(state.get("open", []))
        for tid, cam, ident, first, last, n, _thumb, meta_s, feat, crops in self._rows(sorted(wanted)):
            meta = json.loads(meta_s)
            feats = features_from_bytes(crops, len(meta["best"])) if crops else []
            t = Tracklet(
                tid,
                cam,
                meta["track_id"],
                first,
                last,
                meta["last_frame"],
                np.frombuffer(feat, np.float64).copy(),
                weight_sum=meta["weight_sum"],
                n_crops=n,
                best=[KeptCrop(*c, f) for c, f in zip(meta["best"], feats, strict=True)],
                seen=set(meta["seen"]),
                arrived_at=meta["arrived_at"],
                read_at=meta["read_at"],
                ended=meta["ended"],
                decided=meta["decided"],
            )
            book.tracklets[tid] = t
            if not t.ended:
                book.open.add(tid)
            if ident is not None:
                identities.tracklets[tid] = t
                identities.owner[tid] = ident
        identities.members = members
        identities.seq = state["seq"]
        book.current = dict(state["current"])
        book.segments = Counter(state["segments"])
        book.camera_time = dict(state["camera_time"])
        book.counts = Counter(state["counts"])
        book.horizon = -math.inf if state.get("horizon") is None else state["horizon"]

    def _rows(self, tracklet_ids: list[str]) -> list[tuple]:
        rows = []
        for i in range(0, len(tracklet_ids), 500):
            chunk = tracklet_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows += self.db.execute(f"SELECT * FROM tracklets WHERE tracklet_id IN ({marks})", chunk)
        return rows

    def segments(self, key: str) -> int:
        """How many segments of the track `key` the store holds (`key`, `key+2`, ...)."""
        (n,) = self.db.execute(
            "SELECT count(*) FROM tracklets WHERE tracklet_id = ? OR (tracklet_id > ? AND tracklet_id < ?)",
            (key, key + "+", key + ","),
        ).fetchone()
        return int(n)

    def counts(self) -> dict[str, int]:
        """The matcher's bad-input counters as last saved."""
        row = self.db.execute("SELECT value FROM state WHERE key = 'book'").fetchone()
        return dict(json.loads(row[0])["counts"]) if row else {}

    def events(self, identity_id: str | None = None) -> list[IdentityEvent]:
        """Every identity event saved, in decision order (of one identity when given)."""
        sql, args = "SELECT body FROM events", ()
        if identity_id is not None:
            sql, args = sql + " WHERE identity_id = ?", (identity_id,)
        return [decode_identity(bytes(b)) for (b,) in self.db.execute(sql + " ORDER BY seq", args)]


@dataclass(frozen=True)
class TimelineEntry:
    """One tracklet of an identity: where, when, and its best crop."""

    tracklet_id: str
    camera_id: str
    first_seen: float
    last_seen: float
    crops: int
    thumbnail: str


@dataclass(frozen=True)
class IdentitySummary:
    identity_id: str
    cameras: tuple[str, ...]
    first_seen: float
    last_seen: float
    tracklets: int
    thumbnail: str


def timeline(store: IdentityStore, identity_id: str) -> list[TimelineEntry]:
    """An identity's tracklets in time order (empty for an unknown identity)."""
    rows = store.db.execute(
        "SELECT tracklet_id, camera_id, first_seen, last_seen, n_crops, thumbnail FROM tracklets "
        "WHERE identity_id = ? ORDER BY first_seen, tracklet_id",
        (identity_id,),
    )
    return [TimelineEntry(*r) for r in rows]


def list_identities(
    store: IdentityStore, camera: str | None = None, since: float | None = None, until: float | None = None
) -> list[IdentitySummary]:
    """Identities seen (on `camera`, between `since` and `until` when given), most recently seen first."""
    rows = store.db.execute(
        "SELECT identity_id, camera_id, first_seen, last_seen, thumbnail, n_crops FROM tracklets "
        "WHERE identity_id IS NOT NULL ORDER BY identity_id, first_seen"
    ).fetchall()
    by_id: dict[str, list[tuple]] = {}
    for r in rows:
        by_id.setdefault(r[0], []).append(r)
    out = []
    for ident, rs in by_id.items():
        hits = [
            r
            for r in rs
            if (camera is None or r[1] == camera)
            and (since is None or r[3] >= since)
            and (until is None or r[2] <= until)
        ]
        if not hits:
            continue
        best = max(rs, key=lambda r: r[5])
        out.append(
            IdentitySummary(
                ident,
                tuple(sorted({r[1] for r in rs})),
                min(r[2] for r in rs),
                max(r[3] for r in rs),
                len(rs),
                best[4],
            )
        )
    return sorted(out, key=lambda s: (-s.last_seen, s.identity_id))


def identity_of(store: IdentityStore, detection: Detection | IndexedDetection) -> str | None:
    """The identity whose tracklet saw this detection (None: not linked yet, or identities are off)."""
    key = track_key(detection)
    rows = store.db.execute(  # the track's tracklet and its later segments `key+2`...: a range of the key
        "SELECT identity_id, meta FROM tracklets WHERE identity_id IS NOT NULL AND "
        "(tracklet_id = ? OR (tracklet_id > ? AND tracklet_id < ?))",
        (key, key + "+", key + ","),
    )
    for ident, meta in rows:
        if detection.detection_id in json.loads(meta)["seen"]:
            return ident
    return None


@contextlib.contextmanager
def overwriting(path: Path) -> Iterator[sqlite3.Connection]:
    """The store at `path` in one write transaction that overwrites what it deletes (SQLite secure_delete),
    for erasures and retention; after it the write-ahead log is checkpointed and truncated, so no copy of a
    deleted page stays in the log (unless a reader still holds an older snapshot: then at the next
    checkpoint)."""
    store = IdentityStore(path)
    try:
        store.db.execute("PRAGMA secure_delete = ON")
        with store.db:
            store.db.execute("BEGIN IMMEDIATE")
            yield store.db
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
