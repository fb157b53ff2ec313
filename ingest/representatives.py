"""Tracklet representatives: per local track, one crop per `every_s` seconds of the camera's stream instead
of every crop, so that feature extraction runs on a few good crops of each person.

A track's first crop goes out at once (a new person is searchable without waiting); after that the track's
best crop since (by `matcher.tracklets.crop_quality`, the score the matcher keeps a tracklet's crops by)
goes out with the camera's first frame `every_s` after the last one went out, whether the track is in that
frame or not (a track that flickers out of a frame or two costs no extra crop). So a crop is published at
most `every_s` plus one frame after it was seen.

>>> picker = RepresentativePicker(every_s=1.0)
>>> [c.item for c in picker.offer(10.0, [Candidate(1, 0.5, "a")])]  # a new track: at once
['a']
>>> picker.offer(10.4, [Candidate(1, 0.9, "b")]), picker.offer(10.8, [Candidate(1, 0.7, "c")])
([], [])
>>> [c.item for c in picker.offer(11.2, [Candidate(1, 0.6, "d")])]  # 1 s on: the best since
['b']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
FORGET_AFTER_S = 60.0  # a track not seen for this long (stream time) is forgotten


@dataclass(frozen=True)
class Candidate(Generic[T]):
    """One crop of a track in a frame: the track id, its quality and what to publish."""

    track_id: int
    quality: float
    item: T


@dataclass
class _Track(Generic[T]):
    due_at: float
    last_seen: float
    best: Candidate[T] | None = field(default=None)


class RepresentativePicker(Generic[T]):
    """One camera's tracks; `offer` each frame's candidates in stream order, `flush` at the end."""

    def __init__(self, every_s: float) -> None:
        if every_s <= 0:
            raise ValueError(f"representative interval must be positive, got {every_s}")
        self.every_s = every_s
        self.tracks: dict[int, _Track[T]] = {}

    def offer(self, timestamp: float, candidates: list[Candidate[T]]) -> list[Candidate[T]]:
        """The candidates to publish now, given one frame's (untracked ones, id < 0, always go out)."""
        out: list[Candidate[T]] = []
        for c in candidates:
            if c.track_id < 0:
                out.append(c)
                continue
            t = self.tracks.get(c.track_id)
            if t is None:
                self.tracks[c.track_id] = _Track(due_at=timestamp + self.every_s, last_seen=timestamp)
                out.append(c)
                continue
            t.last_seen = timestamp
            if t.best is None or c.quality > t.best.quality:
                t.best = c
        for track_id, t in list(self.tracks.items()):
            if t.best is not None and timestamp >= t.due_at:  # in this frame or not
                out.append(t.best)
                t.best, t.due_at = None, timestamp + self.every_s
            elif t.best is None and timestamp - t.last_seen > FORGET_AFTER_S:
                del self.tracks[track_id]
        return out

    def flush(self) -> list[Candidate[T]]:
        """Every track's pending best (the stream ended)."""
        out = [t.best for t in self.tracks.values() if t.best is not None]
        self.tracks.clear()
        return out
