"""Which crops of a tracked person the re-ID stage extracts: with `reid.sample_every_s` = S > 0, a local
track's first crop and then its first crop at least S seconds (stream time) after the last one extracted;
the crops between are not extracted, not published and not indexed (counted as sampled out). Untracked
detections are always extracted.

Why: a tracklet's identity needs a few good views, not every frame; extraction is the pipeline's costly
step (RESULTS.md, IDENTITIES: the storage, search and identity trade of S, measured). The rule decides at
arrival, from the crop alone, so nothing waits in memory uncommitted (at-least-once delivery holds), and a
redelivered crop gets the decision it got before (the last `REMEMBERED` decisions of each track are kept).
With S below the matcher's `end_gap_s`, a tracklet's extracted crops stay close enough that the matcher
never ends it early.

Load shedding (`reid.shed_after_s` = A > 0, for live cameras): a crop whose features would come out more
than A seconds (wall clock) after its frame was read means the stage is behind; such a crop is extracted
only by the rule above with S raised to `reid.shed_every_s`, so a backlog drains at the cost of some views
of each track, not by making every identity late (counted as shed). A stage that keeps up sheds nothing.
"Would come out": the wait so far plus `backlog_s`, the extraction already queued ahead of the crop in its
batch (the worker's measured seconds a crop times the crops it has decided to extract): a burst that
arrives in one large batch is shed from its first crops on, not only once the next batch is late too.

Hard shedding (`reid.shed_hard_after_s` = H > A): a crop later than H is extracted only if it is among the
first `hard_crops` (`reid.shed_hard_crops`, 1) of its track's tracklet: its first (or its first after a gap
of `gap_s`, the matcher's end gap, which starts a new tracklet), then each one `shed_every_s` after the
last. The stage's work falls to a few crops per new track until it has caught up: a bound on how far behind
it can fall, whatever the stream brings, as long as new tracks times `hard_crops` come slower than it
extracts.
With `reid.shed_hard_min_quality` = Q > 0 a hard-shed tracklet's due crop is extracted only if its quality
(`matcher.tracklets.crop_quality`: box height, detection score, sharpness, border cut; the score the matcher
keeps a tracklet's crops by) is at least Q, or if it is the `hard_wait_crops`-th due crop, or (with
`hard_wait_s` = W > 0) the first due crop W seconds of stream or more after the first one passed over (so a
tracklet of poor crops still gets one; the wait in crops means a different time at each crop rate, the
wait in seconds the same): the one view a tracklet gets is then rarely a person half in the frame or
blurred. Still decided at arrival, from the crop alone.
A strict bound (`reid.shed_all_after_s` = D > H): a crop later than D is not extracted at all, not even
a tracklet's first. Hard shedding bounds the delay only while new tracks come slower than the stage
extracts one crop each; past D the stage sheds everything until it is back under D, and a tracklet that
got no crop stays due, so its next crop that comes in time is extracted (the matcher holds its sightings
until then, and the tracklet still begins at the first). A track that ends within such a stretch has no
crop extracted; the worker's rescue (`reid.shed_rescue_tracks`, reid/service.py) extracts its best one
once the stage is back under D, so it gets its identity late rather than never.
Every shed crop is still reported to the matcher as a sighting (`pgr.messages.encode_sighting`): its
tracklet goes on, and ends, with the track, not with the last crop that was extracted.

>>> sampler = TrackSampler(every_s=4.0)
>>> sampler.wants(detection)  # doctest: +SKIP
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from matcher.tracklets import crop_quality, past_end_gap
from pgr.messages import CropRecord, Detection, FeatureRecord, track_key

REMEMBERED = 64  # decisions per track kept for redelivery (more than an uncommitted batch holds)
Decision = Literal["extract", "sampled", "shed"]


def record_quality(rec: CropRecord | FeatureRecord) -> float:
    """A crop's quality as the matcher scores it (`matcher.tracklets.crop_quality`)."""
    return crop_quality(rec.detection.box, rec.detection.score, rec.jpeg)


@dataclass
class _Track:
    last_extracted: float
    last_seen: float
    extracted: int = 0  # crops extracted since the track's tracklet began (its first, or after a gap)
    passed: int = 0  # due crops passed over for their quality since the last extraction (hard shedding)
    passed_since: float = 0.0  # the stream time of the first of them
    decided: dict[str, Decision] = field(default_factory=dict)  # detection id -> decision, oldest first


class TrackSampler:
    """The sampling rule's state: per live track, when its last extracted crop was seen. `clock` is the
    wall clock that `Detection.read_at` is on (shedding compares the two)."""

    def __init__(
        self,
        every_s: float,
        forget_s: float = 300.0,
        shed_after_s: float = 0.0,
        shed_every_s: float = 4.0,
        clock: Callable[[], float] = time.time,
        shed_hard_after_s: float = 0.0,
        gap_s: float = math.inf,
        hard_crops: int = 1,
        hard_min_quality: float = 0.0,
        hard_wait_crops: int = 3,
        hard_wait_s: float = 0.0,
        shed_all_after_s: float = 0.0,
        skew_s: float = 2.0,
    ) -> None:
        self.every_s, self.forget_s = every_s, forget_s
        self.shed_after_s, self.shed_every_s, self.clock = shed_after_s, shed_every_s, clock
        self.shed_hard_after_s, self.hard_crops = shed_hard_after_s, hard_crops
        self.hard_min_quality, self.hard_wait_crops = hard_min_quality, hard_wait_crops
        self.hard_wait_s, self.shed_all_after_s = hard_wait_s, shed_all_after_s
        self.gap_s = gap_s  # a track seen again after this long starts a new tracklet: a first crop again
        self.skew_s = skew_s  # how far apart the cameras' clocks may be (the matcher's camera_skew_s)
        self.tracks: dict[str, _Track] = {}
        self.newest: dict[str, float] = {}  # camera -> newest stream time seen
        self.calls = 0

    def wants(self, det: Detection) -> bool:
        """Whether to extract this crop (and remember the decision)."""
        return self.decide(det) == "extract"

    def decide(
        self, det: Detection, backlog_s: float = 0.0, quality: Callable[[], float] | None = None
    ) -> Decision:
        """extract, sampled (the S rule) or shed (late, and its track had a crop extracted recently);
        `backlog_s`: the extraction queued ahead of this crop (seconds), counted in its lateness;
        `quality`: the crop's quality, asked for only when hard shedding weighs it (it may cost a decode)."""
        if (self.every_s <= 0 and self.shed_after_s <= 0) or det.track_id < 0:
            return "extract"
        self._forget(det)
        key = track_key(det)
        t = self.tracks.get(key)
        if t is not None and det.detection_id in t.decided:
            return t.decided[det.detection_id]  # redelivered: the same answer
        lateness = self.clock() - det.read_at + backlog_s
        late = 0 < self.shed_after_s < lateness
        every = max(self.every_s, self.shed_every_s) if late else self.every_s
        # first crop (of the track, or of its tracklet after a gap), S seconds on, or a clock that went
        # back (a camera reboot): extract
        fresh = t is None or det.timestamp - t.last_seen > self.gap_s
        hard = 0 < self.shed_hard_after_s < lateness
        if hard and (fresh or t.extracted >= self.hard_crops):
            every = math.inf  # only a tracklet's first `hard_crops` crops
        # nothing extracted of its tracklet yet (its first crops were passed over for their quality): due
        since = math.inf if fresh or t.extracted == 0 else abs(det.timestamp - t.last_extracted)
        decision: Decision = "extract" if since >= every else "shed" if since >= self.every_s else "sampled"
        if t is None:
            t = self.tracks[key] = _Track(det.timestamp, det.timestamp)
        if fresh:
            t.extracted = t.passed = 0
        if decision == "extract" and 0 < self.shed_all_after_s < lateness:
            decision = "shed"  # too late for any crop: its tracklet stays due (nothing extracted since)
        elif decision == "extract" and hard and self._poor(t, det.timestamp, quality):
            decision = "shed"  # its tracklet waits for a better view
            if t.passed == 0:
                t.passed_since = det.timestamp
            t.passed += 1
        if decision == "extract":
            t.last_extracted = det.timestamp
            t.extracted += 1
            t.passed = 0
        t.last_seen = max(t.last_seen, det.timestamp)
        t.decided[det.detection_id] = decision
        if len(t.decided) > REMEMBERED:
            del t.decided[next(iter(t.decided))]
        return decision

    def unserved(self, key: str) -> bool:
        """Whether the current tracklet of track `key` has had no crop extracted (what a shed crop of it
        could be kept for: the re-ID stage's rescue, reid/service.py)."""
        t = self.tracks.get(key)
        return t is not None and t.extracted == 0

    def gone(self, key: str) -> bool:
        """Whether track `key` has ended as the matcher will see it (`matcher.tracklets`): its camera's
        stream ran the end gap past its last crop, or any camera's ran the end gap and the skew past it
        (a camera that went quiet); or it was forgotten."""
        t = self.tracks.get(key)
        if t is None:
            return True
        own = self.newest.get(key.split(":", 1)[0], t.last_seen)
        return past_end_gap(own, max(self.newest.values()), t.last_seen, self.gap_s, self.skew_s)

    def served(self, det: Detection) -> None:
        """A crop of `det`'s track was extracted outside `decide` (a rescued one): its tracklet has one."""
        t = self.tracks.get(track_key(det))
        if t is not None:
            t.extracted += 1
            t.last_extracted, t.passed = det.timestamp, 0

    @property
    def bound_s(self) -> float:
        """The strictest lateness bound in force (shed_all_after_s, else shed_hard_after_s, else
        shed_after_s; 0: none): how late the stage may run while it extracts a tracklet's first crop."""
        return self.shed_all_after_s or self.shed_hard_after_s or self.shed_after_s

    def _poor(self, t: _Track, at: float, quality: Callable[[], float] | None) -> bool:
        """A due crop under hard shedding (stream time `at`) that waits for a better one of its tracklet:
        below `hard_min_quality`, while fewer than `hard_wait_crops` - 1 were passed over and, with
        `hard_wait_s`, less than that has passed since the first of them."""
        if self.hard_min_quality <= 0 or quality is None or t.passed >= self.hard_wait_crops - 1:
            return False
        if t.passed and 0 < self.hard_wait_s <= at - t.passed_since:
            return False
        return quality() < self.hard_min_quality

    def _forget(self, det: Detection) -> None:
        """Drop tracks not seen for `forget_s` of their camera's stream time (bounded memory)."""
        cam = det.camera_id
        self.newest[cam] = max(self.newest.get(cam, det.timestamp), det.timestamp)
        self.calls += 1
        if self.calls % 1024:
            return
        for key in [k for k, t in self.tracks.items() if self._stale(k, t)]:
            del self.tracks[key]

    def _stale(self, key: str, t: _Track) -> bool:
        cam = key.split(":", 1)[0]
        return self.newest.get(cam, t.last_seen) - t.last_seen > self.forget_s
