"""Forgetting in the identity state what was erased or has expired: the identity store's rows and a running
matcher's books.

- An erased local track (`forget_in_store`, `forget_in_memory`): every tracklet of it (all its segments),
  their events, and any identity left without tracklets.
- An erased detection (`forget_detections_*`): its id among its tracklet's crops seen and, when it is one of
  the tracklet's kept best crops, that crop (features and thumbnail path; events naming the thumbnail lose
  it). The tracklet's mean feature keeps the detection's share (an average over the whole track).
- A retention run (`forget_expired_*`): tracklets last seen before their camera's cutoff, as for a track,
  and kept crops seen before it in the tracklets that go on.

Both sides apply the same rules: the eraser or the retention run changes the store in the transaction that
writes its request to the ledger (matcher/tombstones.py); a running matcher, whose books still hold what was
changed, applies every request since its last save at its next save, inside the store's write lock, before
it writes anything (`IdentityStore.save`). So its save never writes back what was deleted, and a matcher
started later loads a state without it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from matcher.identities import IdentityBook
from matcher.tombstones import Cutoffs, tombstone, track_of
from matcher.tracklets import KeptCrop, TrackletBook, features_from_bytes, features_to_bytes
from pgr.messages import decode_identity, encode_identity, track_key

if TYPE_CHECKING:
    from matcher.index import IndexedDetection


@dataclass
class Forgotten:
    """What was deleted from the store."""

    tracklets: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)  # left without tracklets, so gone
    events: int = 0
    detection_ids: set[str] = field(default_factory=set)  # every crop the deleted tracklets had seen
    crops: int = 0  # kept crops taken out of tracklets that go on


# ---- the store -------------------------------------------------------------------------------------------


def forget_in_store(db: sqlite3.Connection, keys: set[str]) -> Forgotten:
    """Delete the tracklets of these local tracks, their events and emptied identities, and take them out of
    the saved books (inside the caller's write transaction)."""
    tids = [t for (t,) in db.execute("SELECT tracklet_id FROM tracklets")]
    return _delete_tracklets(db, {t for t in tids if track_of(t) in keys}, tracks=keys)


def forget_detections_in_store(db: sqlite3.Connection, detections: list[IndexedDetection]) -> int:
    """Take these detections out of their tracklets' rows (crops seen, kept crops) and their thumbnails out
    of the events that name them (inside the caller's write transaction); returns the tracklets changed."""
    changed, thumbs = 0, set()
    for d in detections:
        key = track_key(d)
        rows = db.execute(
            "SELECT tracklet_id, n_crops, meta, crops FROM tracklets "
            "WHERE tracklet_id = ? OR (tracklet_id > ? AND tracklet_id < ?)",
            (key, key + "+", key + ","),
        ).fetchall()
        for tid, n, meta, crops in rows:
            if d.detection_id in json.loads(meta)["seen"]:
                ids = {d.detection_id}
                thumbs |= _rewrite(db, tid, n, meta, crops, lambda c, ids=ids: c.detection_id in ids, ids)
                thumbs.add(d.thumbnail)
                changed += 1
    _blank_thumbnails(db, thumbs - {""})
    return changed


def forget_expired_in_store(db: sqlite3.Connection, cutoffs: Cutoffs) -> Forgotten:
    """Delete the tracklets last seen before their camera's cutoff (with their events and emptied
    identities), and the kept crops seen before it from the others (inside the caller's transaction)."""
    gone, thumbs, crops = set(), set(), 0
    rows = db.execute("SELECT tracklet_id, camera_id, last_seen, n_crops, meta, crops FROM tracklets")
    for tid, camera, last_seen, n, meta, blob in rows.fetchall():
        cutoff = cutoffs.of(camera)
        if cutoff is None:
            continue
        if last_seen < cutoff:
            gone.add(tid)
        elif any(c[1] < cutoff for c in json.loads(meta)["best"]):
            dropped = _rewrite(db, tid, n, meta, blob, lambda c, t=cutoff: c.timestamp < t, set())
            thumbs |= dropped
            crops += len(dropped)
    _blank_thumbnails(db, thumbs)
    out = _delete_tracklets(db, gone, tracks=set())
    out.crops = crops
    return out


def _delete_tracklets(db: sqlite3.Connection, gone: set[str], tracks: set[str]) -> Forgotten:
    """Delete these tracklets' rows and events, drop them (and identities left empty) from the saved books;
    `tracks`: local-track keys whose segment counters go too."""
    out = Forgotten(tracklets=sorted(gone))
    if not gone:
        return out
    for tid in out.tracklets:
        (meta,) = db.execute("SELECT meta FROM tracklets WHERE tracklet_id = ?", (tid,)).fetchone()
        out.detection_ids.update(json.loads(meta)["seen"])
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
        state["segments"] = {k: n for k, n in state["segments"].items() if k not in tracks}
        db.execute("UPDATE state SET value = ? WHERE key = 'book'", (json.dumps(state),))
    emptied = set(out.identities)
    doomed = [
        seq
        for seq, ident, body in db.execute("SELECT seq, identity_id, body FROM events")
        if ident in emptied or decode_identity(bytes(body)).tracklet_id in gone
    ]
    db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in doomed])
    out.events = len(doomed)
    return out


def _rewrite(
    db: sqlite3.Connection,
    tid: str,
    n_crops: int,
    meta_text: str,
    blob: bytes | None,
    drop: Callable[[KeptCrop], bool],
    unseen: set[str],
) -> set[str]:
    """Rewrite one tracklet's row without the kept crops `drop` picks and the crops seen in `unseen`;
    returns the dropped crops' thumbnails."""
    meta = json.loads(meta_text)
    feats = features_from_bytes(blob, len(meta["best"])) if blob else []
    best = [KeptCrop(*c, f) for c, f in zip(meta["best"], feats, strict=True)]
    dropped = {c.thumbnail for c in best if drop(c)}
    best = [c for c in best if not drop(c)]
    meta["best"] = [[c.detection_id, c.timestamp, c.quality, c.thumbnail] for c in best]
    seen = [i for i in meta["seen"] if i not in unseen]
    n_crops -= len(meta["seen"]) - len(seen)
    meta["seen"] = seen
    top = max(best, key=lambda c: c.quality).thumbnail if best else ""
    db.execute(
        "UPDATE tracklets SET n_crops = ?, thumbnail = ?, meta = ?, crops = ? WHERE tracklet_id = ?",
        (n_crops, top, json.dumps(meta), features_to_bytes(best) if best else None, tid),
    )
    return dropped


def _blank_thumbnails(db: sqlite3.Connection, thumbs: set[str]) -> None:
    """Events that name one of these thumbnails (deleted files) lose the name."""
    if not thumbs:
        return
    for seq, body in db.execute("SELECT seq, body FROM events").fetchall():
        e = decode_identity(bytes(body))
        if e.thumbnail in thumbs:
            db.execute(
                "UPDATE events SET body = ? WHERE seq = ?", (encode_identity(replace(e, thumbnail="")), seq)
            )


# ---- a running matcher's books ---------------------------------------------------------------------------


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
    emptied = _drop_tracklets(book, identities, gone)
    for key in {track_of(tid) for tid in gone}:
        book.segments.pop(key, None)  # a later crop of the track (none passes the tombstones) starts afresh
    return gone, emptied


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


def forget_expired_in_memory(
    book: TrackletBook, identities: IdentityBook, cutoffs: Cutoffs
) -> tuple[set[str], set[str]]:
    """Drop the tracklets last seen before their camera's cutoff (and identities left empty), and the kept
    crops seen before it from the others; returns (tracklet ids, identity ids) dropped."""
    gone = set()
    for t in book.tracklets.values():
        cutoff = cutoffs.of(t.camera_id)
        if cutoff is None:
            continue
        if t.last_seen < cutoff:
            gone.add(t.tracklet_id)
        elif any(c.timestamp < cutoff for c in t.best):
            t.best = [c for c in t.best if c.timestamp >= cutoff]
            book.dirty.add(t.tracklet_id)
    return gone, _drop_tracklets(book, identities, gone)


def _drop_tracklets(book: TrackletBook, identities: IdentityBook, gone: set[str]) -> set[str]:
    """Take tracklets out of the books; returns the identities left without tracklets (dropped too)."""
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
    for key, tid in list(book.current.items()):
        if tid in gone:
            del book.current[key]
    return emptied
