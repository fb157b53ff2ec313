"""Erasure on request: of detections, or of everything stored about one global identity.

Erasing an identity (`erase_identity`) deletes, for every local track one of its tracklets came from:
- in the identity store (one transaction): the tracklets (all segments of those tracks, with their kept
  crops' features and thumbnails' paths), the events about them, the identity and any other identity left
  without tracklets, and writes the tombstones (matcher/tombstones.py);
- then every indexed detection of those tracks (the ids the tracklets saw, and whatever else the index holds
  for the tracks): index rows, thumbnails and part/pixel features (matcher/retention.py `erase`).
A running matcher drops the identity from its memory at its next save (matcher/forget.py) and, from the
moment the transaction commits, indexes nothing of those tracks again; records of them it was already
writing are found by one side or the other (the matcher re-checks its batch after its index write, the
eraser reads the index after its commit).

Erasing detections (`erase_detections`) deletes their index rows, thumbnails and features, takes them out of
their tracklets in the identity store, and tombstones their ids.

The identity store is written with SQLite's secure_delete and its write-ahead log truncated afterwards, so
the deleted rows are overwritten in the file, not merely unlinked.

>>> erased = erase_identity(path, index, thumbnails, features, "id:cam1:f1a2b3:t7")  # doctest: +SKIP
>>> erased.detections, erased.tracklets  # doctest: +SKIP
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from matcher.feature_store import FeatureStore
from matcher.forget import forget_detections_in_store, forget_in_store
from matcher.identity_store import overwriting
from matcher.index import IndexedDetection
from matcher.open_index import AnyIndex
from matcher.retention import erase
from matcher.thumbnails import ThumbnailStore
from matcher.tombstones import record_erasure, tombstone, track_of
from pgr.messages import decode_identity, track_key

_PAGE = 4096


class UnknownIdentity(LookupError):
    """No such identity in the store (the message says whether it was merged, erased or never formed)."""


@dataclass(frozen=True)
class IdentityErased:
    """What erasing one identity deleted."""

    identity_id: str
    request: int  # the erasure's number in the ledger
    tracklets: list[str]
    identities: list[str]  # the identity, and any other left without tracklets (same local track)
    events: int
    detections: int  # index rows (each with its thumbnail and features)

    def counts(self) -> dict:
        """What was deleted, as the API answers and the audit log records it."""
        return {
            "request": self.request,
            "tracklets": len(self.tracklets),
            "identities": self.identities,
            "events": self.events,
            "detections": self.detections,
        }


def erase_identity(
    store_path: Path,
    index: AnyIndex,
    thumbnails: ThumbnailStore,
    features: FeatureStore,
    identity_id: str,
) -> IdentityErased:
    """Erase everything stored about one identity (see the module docstring); UnknownIdentity if none."""
    if not Path(store_path).is_file():
        raise UnknownIdentity(f"no identity {identity_id!r}: the matcher has formed no identities yet")
    with overwriting(store_path) as db:
        tids = [
            t
            for (t,) in db.execute("SELECT tracklet_id FROM tracklets WHERE identity_id = ?", (identity_id,))
        ]
        if not tids:
            raise UnknownIdentity(_why_unknown(db, identity_id))
        keys = {track_of(t) for t in tids}
        forgot = forget_in_store(db, keys)
        request = record_erasure(db, "identity", forgot.detection_ids, keys, subject=identity_id)
    seen = sorted(forgot.detection_ids)
    deleted = 0
    for i in range(0, len(seen), _PAGE):
        deleted += erase(index, thumbnails, features, index.get(seen[i : i + _PAGE]))
    for key in keys:  # what the index holds of the tracks beyond the crops the tracklets counted
        deleted += erase_track(index, thumbnails, features, key)
    index.compact()
    return IdentityErased(identity_id, request, forgot.tracklets, forgot.identities, forgot.events, deleted)


def erase_track(index: AnyIndex, thumbnails: ThumbnailStore, features: FeatureStore, key: str) -> int:
    """Erase the indexed detections of one local track (a `track_key`); returns how many."""
    parts = key.split(":")
    camera, track = parts[0], parts[-1]
    if not (track.startswith("t") and track[1:].isdigit()):
        return 0  # an untracked detection is its own track: its id was erased already
    prefix = f"{camera}:{parts[1]}:" if len(parts) == 3 else None
    total = 0
    while page := index.of_track(camera, int(track[1:]), prefix, limit=_PAGE):
        mine = [d for d in page if track_key(d) == key]
        total += erase(index, thumbnails, features, mine)
        if len(page) < _PAGE or not mine:
            break
    return total


def erase_detections(
    store_path: Path,
    index: AnyIndex,
    thumbnails: ThumbnailStore,
    features: FeatureStore,
    ids: list[str],
) -> list[IndexedDetection]:
    """Erase these detections (index rows, thumbnails, features; in their tracklets, the id and a kept crop)
    and tombstone every id asked for, found or not yet indexed; returns the detections found (now gone)."""
    found = index.get(ids)
    with overwriting(store_path) as db:
        record_erasure(db, "detections", ids)
        forget_detections_in_store(db, found)
    erase(index, thumbnails, features, found)
    index.compact()
    return found


def _why_unknown(db: sqlite3.Connection, identity_id: str) -> str:
    """Why there is no identity by this id: erased, merged into another, or never formed."""
    row = db.execute(
        "SELECT request, time FROM erasures WHERE subject = ?", (tombstone(identity_id),)
    ).fetchone()
    if row is not None:
        return f"identity {identity_id!r} was erased (erasure request {row[0]})"
    for (body,) in db.execute("SELECT body FROM events ORDER BY seq DESC"):
        e = decode_identity(bytes(body))
        if e.previous_id == identity_id and e.kind == "merged":
            return f"no identity {identity_id!r}: it was merged into {e.identity_id!r} (erase that one)"
        if e.previous_id == identity_id and e.kind == "moved":
            return f"no identity {identity_id!r}: its last tracklet moved to {e.identity_id!r}"
    return f"no identity {identity_id!r}"
