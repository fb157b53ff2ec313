"""Tombstones: what was erased on request must never come back.

An erased detection or person is gone from the index, the files and the identity state, but its records may
still come again: Kafka redelivers what a matcher had not committed, a consumer group reset or a new group
replays a topic from its start, and `pgr index` re-reads an interrupted file (the same file gives the same
detection ids). So every erasure on request leaves tombstones, and the matcher drops a record whose
detection id, or whose local track (`track_key`: camera, ingest run, track), has one: it is neither
indexed nor given to a tracklet. A tombstoned track also stops the rest of a track still in progress: the
person's crops still arriving from the tracker that followed them are dropped too.

A tombstone is the SHA-256 of the erased id or track key: no readable id, no image, no feature is kept. The
ledger (the `erasures` request list and the two tombstone tables) lives in the identity store's SQLite file,
so an identity erasure, its tombstones and the identity state change in one transaction (see
matcher/identity_erasure.py); it is created there even when identities are off.

The ledger also lists retention runs (their cutoffs), so that a running matcher forgets the expired
tracklets it holds in memory as it forgets erased ones (matcher/forget.py). Retention leaves no tombstones:
a replayed record older than the retention period is deleted again by the next run.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pgr.messages import Detection, track_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS erasures (
    request INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL, subject TEXT, cutoffs TEXT);
CREATE TABLE IF NOT EXISTS erased_detections (hash TEXT PRIMARY KEY, request INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS erased_tracks (hash TEXT PRIMARY KEY, request INTEGER NOT NULL);
"""
_CHUNK = 500  # ids per IN (...) query, under SQLite's variable limit


def tombstone(text: str) -> str:
    """The tombstone of a detection id or a track key."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def track_of(tracklet_id: str) -> str:
    """The local-track key of a tracklet id (a track split by a long gap has segments `key+2`, `key+3`...)."""
    key, plus, n = tracklet_id.rpartition("+")
    return key if plus and n.isdigit() else tracklet_id


def record_erasure(
    db: sqlite3.Connection,
    kind: str,
    detection_ids: Iterable[str],
    track_keys: Iterable[str] = (),
    subject: str | None = None,
) -> int:
    """Write one erasure request (of `subject`, an identity id, when given: kept as its tombstone) and its
    tombstones, inside the caller's transaction; returns the request's number."""
    cur = db.execute(
        "INSERT INTO erasures (time, kind, subject) VALUES (?, ?, ?)",
        (time.time(), kind, tombstone(subject) if subject else None),
    )
    request = int(cur.lastrowid)
    for table, texts in (("erased_detections", detection_ids), ("erased_tracks", track_keys)):
        db.executemany(
            f"INSERT OR IGNORE INTO {table} VALUES (?, ?)", [(tombstone(t), request) for t in set(texts)]
        )
    return request


@dataclass(frozen=True)
class Cutoffs:
    """A retention run's cutoffs (unix seconds): what was seen before them has expired. `default` holds for
    every camera not in `cameras`; None: nothing of those cameras expires."""

    default: float | None
    cameras: dict[str, float | None] = field(default_factory=dict)

    def of(self, camera_id: str) -> float | None:
        return self.cameras.get(camera_id, self.default)

    def to_json(self) -> str:
        return json.dumps({"default": self.default, "cameras": self.cameras}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Cutoffs:
        raw = json.loads(text)
        return cls(raw["default"], raw["cameras"])


def record_retention(db: sqlite3.Connection, cutoffs: Cutoffs) -> int:
    """Write a retention run (inside the caller's transaction), for the matchers to apply; returns its
    number. It leaves no tombstones: a replayed record that old is purged again by the next run."""
    cur = db.execute(
        "INSERT INTO erasures (time, kind, cutoffs) VALUES (?, 'retention', ?)",
        (time.time(), cutoffs.to_json()),
    )
    return int(cur.lastrowid)


@dataclass
class Pending:
    """What the requests after a given one ask a matcher to forget."""

    tracks: set[str] = field(default_factory=set)  # tombstones
    detections: set[str] = field(default_factory=set)  # tombstones
    cutoffs: list[Cutoffs] = field(default_factory=list)  # retention runs, in order
    last: int = 0  # the latest request


def erased_since(db: sqlite3.Connection, request: int) -> Pending:
    """The tombstones and retention runs of the requests after `request`."""
    last = db.execute("SELECT COALESCE(MAX(request), 0) FROM erasures").fetchone()[0]
    out = Pending(last=max(int(last), request))
    if last <= request:
        return out
    out.tracks = {h for (h,) in db.execute("SELECT hash FROM erased_tracks WHERE request > ?", (request,))}
    out.detections = {
        h for (h,) in db.execute("SELECT hash FROM erased_detections WHERE request > ?", (request,))
    }
    rules = db.execute(
        "SELECT cutoffs FROM erasures WHERE request > ? AND kind = 'retention' ORDER BY request", (request,)
    )
    out.cutoffs = [Cutoffs.from_json(c) for (c,) in rules]
    return out


def _present(db: sqlite3.Connection, table: str, hashes: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(hashes), _CHUNK):
        part = hashes[i : i + _CHUNK]
        marks = ",".join("?" * len(part))
        found |= {h for (h,) in db.execute(f"SELECT hash FROM {table} WHERE hash IN ({marks})", part)}
    return found


class Tombstones:
    """The matcher's view of the ledger: which incoming detections were erased (by id or by track)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def erased(self, detections: list[Detection]) -> set[str]:
        """The ids of the detections that have a tombstone (their own or their track's)."""
        if not detections:
            return set()
        by_id = {tombstone(d.detection_id): d.detection_id for d in detections}
        by_track: dict[str, list[str]] = {}
        for d in detections:
            by_track.setdefault(tombstone(track_key(d)), []).append(d.detection_id)
        out = {by_id[h] for h in _present(self.db, "erased_detections", list(by_id))}
        for h in _present(self.db, "erased_tracks", list(by_track)):
            out.update(by_track[h])
        return out

    def close(self) -> None:
        self.db.close()
