"""Forgetting local tracks in the identity state: the identity store's rows and the running matcher's books.

What is forgotten is every tracklet of an erased local track (all its segments), its events, and any
identity left without tracklets. Both sides apply the same rule:

- the eraser (`pgr serve`, `pgr erase`) deletes the rows in the store, in the transaction that writes the
  tombstones (`forget_in_store`);
- a running matcher, whose books still hold those tracklets, drops them at its next save, inside the
  store's write lock, before it writes anything (`forget_in_memory`, called by `IdentityStore.save`): its
  save can never write back what an erasure deleted, and a matcher started later loads a state without them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

from matcher.identities import IdentityBook
from matcher.tombstones import tombstone, track_of
from matcher.tracklets import TrackletBook
from pgr.messages import decode_identity


@dataclass
class Forgotten:
    """What `forget_in_store` deleted."""

    tracklets: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)  # left without tracklets, so gone
    events: int = 0
    detection_ids: set[str] = field(default_factory=set)  # every crop the tracklets had seen


def forget_in_store(db: sqlite3.Connection, keys: set[str]) -> Forgotten:
    """Delete the tracklets of these local tracks, their events and emptied identities, and take them out of
    the saved books (inside the caller's write transaction)."""
    out = Forgotten()
    rows = db.execute("SELECT tracklet_id, meta FROM tracklets").fetchall()
    gone = {tid for tid, _ in rows if track_of(tid) in keys}
    for tid, meta in rows:
        if tid in gone:
            out.detection_ids.update(json.loads(meta)["seen"])
    out.tracklets = sorted(gone)
    db.executemany("DELETE FROM tracklets WHERE tracklet_id = ?", [(t,) for t in out.tracklets])
    row = db.execute("SELECT value FROM state WHERE key = 'book'").fetchone()
    if row is not None:
        state = json.loads(row[0])
        members = {}
        for ident, tids in state["members"].items():
            kept = [t for t in tids if t not in gone]
            if kept:
                members[ident] = kept
            elif set(tids) & gone:
                out.identities.append(ident)
        state["members"] = members
        state["current"] = {k: t for k, t in state["current"].items() if t not in gone}
        state["segments"] = {k: n for k, n in state["segments"].items() if k not in keys}
        db.execute("UPDATE state SET value = ? WHERE key = 'book'", (json.dumps(state),))
    emptied = set(out.identities)
    doomed = [
        seq
        for seq, ident, body in db.execute("SELECT seq, identity_id, body FROM events")
        if ident in emptied or track_of(decode_identity(bytes(body)).tracklet_id) in keys
    ]
    db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in doomed])
    out.events = len(doomed)
    return out


def forget_in_memory(
    book: TrackletBook, identities: IdentityBook, track_tombstones: Iterable[str]
) -> tuple[set[str], set[str]]:
    """Drop from a matcher's books every tracklet whose local track has one of these tombstones, and every
    identity left without tracklets; returns (tracklet ids, identity ids) dropped."""
    hashes = set(track_tombstones)
    if not hashes:
        return set(), set()
    known = set(book.tracklets) | set(identities.owner)
    gone = {tid for tid in known if tombstone(track_of(tid)) in hashes}
    emptied: set[str] = set()
    for tid in gone:
        book.tracklets.pop(tid, None)
        book.open.discard(tid)
        book.dirty.discard(tid)
        identities.tracklets.pop(tid, None)
        ident = identities.owner.pop(tid, None)
        members = identities.members.get(ident or "")
        if members is not None and tid in members:
            members.remove(tid)
            if not members:
                del identities.members[ident]
                emptied.add(ident)
    for key in {track_of(tid) for tid in gone}:
        book.segments.pop(key, None)  # a later crop of the track (none passes the tombstones) starts afresh
        book.current.pop(key, None)
    return gone, emptied
