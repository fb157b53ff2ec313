"""Forgetting erased tracks and detections in the identity state: the identity store's rows and the running
matcher's books.

For an erased local track: every tracklet of it (all its segments), its events, and any identity left
without tracklets. For an erased detection: its id in its tracklet's crops seen and, when it is one of the
tracklet's kept best crops, that crop (features and thumbnail path; events naming the thumbnail lose it).
The tracklet's mean feature keeps the detection's share (it is an average over the whole track). Both sides
apply the same rule:

- the eraser (`pgr serve`, `pgr erase`) changes the rows in the store, in the transaction that writes the
  tombstones (`forget_in_store`, `forget_detections_in_store`);
- a running matcher, whose books still hold them, drops them at its next save, inside the store's write
  lock, before it writes anything (`forget_in_memory`, `forget_detections_in_memory`, called by
  `IdentityStore.save`): its save never writes back what an erasure deleted, and a matcher started later
  loads a state without them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from matcher.identities import IdentityBook
from matcher.tombstones import tombstone, track_of
from matcher.tracklets import KeptCrop, TrackletBook, detection_key, features_from_bytes, features_to_bytes
from pgr.messages import decode_identity, encode_identity

if TYPE_CHECKING:
    from matcher.index import IndexedDetection


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


def forget_detections_in_store(db: sqlite3.Connection, detections: list[IndexedDetection]) -> int:
    """Take these detections out of their tracklets' rows (crops seen, kept crops) and their thumbnails out
    of the events that name them (inside the caller's write transaction); returns the tracklets changed."""
    changed = 0
    thumbs = {d.thumbnail for d in detections if d.thumbnail}
    for d in detections:
        key = detection_key(d)
        rows = db.execute(
            "SELECT tracklet_id, n_crops, meta, crops FROM tracklets "
            "WHERE tracklet_id = ? OR (tracklet_id > ? AND tracklet_id < ?)",
            (key, key + "+", key + ","),
        ).fetchall()
        for tid, n, meta_s, crops in rows:
            meta = json.loads(meta_s)
            if d.detection_id not in meta["seen"]:
                continue
            meta["seen"].remove(d.detection_id)
            feats = features_from_bytes(crops, len(meta["best"])) if crops else []
            best = [KeptCrop(*c, f) for c, f in zip(meta["best"], feats, strict=True)]
            best = [c for c in best if c.detection_id != d.detection_id]
            meta["best"] = [[c.detection_id, c.timestamp, c.quality, c.thumbnail] for c in best]
            top = max(best, key=lambda c: c.quality).thumbnail if best else ""
            db.execute(
                "UPDATE tracklets SET n_crops = ?, thumbnail = ?, meta = ?, crops = ? WHERE tracklet_id = ?",
                (n - 1, top, json.dumps(meta), features_to_bytes(best) if best else None, tid),
            )
            changed += 1
    if changed and thumbs:
        for seq, body in db.execute("SELECT seq, body FROM events").fetchall():
            e = decode_identity(bytes(body))
            if e.thumbnail in thumbs:
                plain = encode_identity(replace(e, thumbnail=""))
                db.execute("UPDATE events SET body = ? WHERE seq = ?", (plain, seq))
    return changed


def forget_detections_in_memory(book: TrackletBook, detection_tombstones: Iterable[str]) -> set[str]:
    """Take the detections with these tombstones out of a matcher's tracklets (crops seen, kept crops);
    returns the tracklets changed (marked to be saved)."""
    hashes = set(detection_tombstones)
    if not hashes:
        return set()
    changed = set()
    for t in book.tracklets.values():
        erased = {i for i in t.seen if tombstone(i) in hashes}
        if erased:
            t.seen -= erased
            t.best = [c for c in t.best if c.detection_id not in erased]
            t.n_crops -= len(erased)
            book.dirty.add(t.tracklet_id)
            changed.add(t.tracklet_id)
    return changed
