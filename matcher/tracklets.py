"""Tracklets: per (camera, local track), the crops scored for quality, the best few kept with their part and
pixel features, and a quality-weighted tracklet feature; a tracklet ends when its camera's stream runs
`end_gap_s` past its last crop, when nothing of it arrived for `idle_end_s`, or at the end of the stream.

What is indexed and when: every detection still goes to the index (search wants every sighting); the
identities use the tracklets' best crops only (`keep_best` per tracklet), so identity matching costs
`keep_best` crops per tracklet instead of every crop (RESULTS.md, IDENTITIES).

Bad input is counted in `TrackletBook.counts`, never raised: a crop of a camera outside `cameras`
(`unknown_camera`), one older than its tracklet's last (`out_of_order`, kept), one for a tracklet that has
already ended and was decided (`late`, dropped), and a track id seen again after its tracklet ended or with
a clock that went back (`track_restart`: a camera reboot restarts its tracker; a new tracklet begins).

Sightings (crops the re-ID stage shed, `pgr.messages.encode_sighting`) carry no features: they only keep
their track's open tracklet going (its last crop, hence its end). Sightings of a track with no tracklet yet
(hard shedding passed over its first crops for a better one, `reid.shed_hard_min_quality`) are held as
pending: the tracklet its next extracted crop starts within the end gap begins at the first of them, so a
timeline starts when the person appeared, not when a crop of them was good enough. Pending sightings that no
extracted crop follows within the end gap, and sightings of a tracklet that had already ended, are counted
(`sighting_unmatched`) and dropped. Pending sightings live in memory only: after a matcher restart the
tracklet begins at the pending sightings redelivered with the uncommitted batch, or at its first crop.
The last `LAPSED_KEPT` stretches of pending sightings that no crop followed are remembered a while longer
(`LAPSED_S` of their camera's stream): the re-ID stage may extract one of their crops after the track has
ended (its rescue, reid/service.py), and the tracklet that crop starts then spans the whole stretch
(`sighting_rescued` counts those sightings).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from pgr.messages import CropFeatures, Detection, FeatureRecord, track_key

# quality: a crop this tall (pixels) or this sharp (variance of the Laplacian) scores half its best
HALF_QUALITY_HEIGHT = 128.0
HALF_QUALITY_SHARPNESS = 60.0
BORDER_CUT_PENALTY = 0.5
BORDER_PX = 2.0
LAPSED_KEPT = 4096  # stretches of pending sightings that no crop followed, remembered for a late crop ...
LAPSED_S = 300.0  # ... for this long of their camera's stream


@dataclass
class PendingSightings:
    """Sightings of a track before any crop of it was extracted: where its tracklet will begin."""

    camera_id: str
    first_seen: float
    last_seen: float
    count: int = 0


# the crops TrackletBook.counts counts (pgr_tracklet_input_total{reason})
INPUT_REASONS = ("unknown_camera", "out_of_order", "late", "track_restart", "duplicate")


def past_end_gap(
    camera_time: float, newest: float, last_seen: float, end_gap_s: float, skew_s: float
) -> bool:
    """Whether a track last seen at `last_seen` has ended: its own camera's stream (at `camera_time`) ran the
    end gap past it, or the newest of any camera's (`newest`) ran the end gap and the skew past it. The
    matcher ends tracklets by it, and the re-ID stage's rescue waits for it (reid/sampling.py)."""
    return camera_time - last_seen > end_gap_s or newest - last_seen > end_gap_s + skew_s


def crop_quality(box: tuple[float, float, float, float], score: float, jpeg: bytes) -> float:
    """A crop's quality in (0, 1]: box height, detection score, sharpness and a penalty when the box is cut
    by the frame's top or left border or is too squat for a whole standing person (the frame size is not in
    the record, so a cut at the right or bottom shows only through the aspect ratio)."""
    x1, y1, x2, y2 = box
    height, width = y2 - y1, x2 - x1
    size = height / (height + HALF_QUALITY_HEIGHT)
    sharp = sharpness(jpeg)
    sharp_term = sharp / (sharp + HALF_QUALITY_SHARPNESS)
    cut = x1 <= BORDER_PX or y1 <= BORDER_PX or height < 1.5 * width
    q = size * max(score, 0.05) * max(sharp_term, 0.05) * (BORDER_CUT_PENALTY if cut else 1.0)
    return float(min(max(q, 1e-6), 1.0))


def sharpness(jpeg: bytes) -> float:
    """Variance of the Laplacian of the crop's grey image (0 when it cannot be decoded)."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None or img.size == 0:
        return 0.0
    return float(cv2.Laplacian(img, cv2.CV_32F).var())


@dataclass
class KeptCrop:
    """One of a tracklet's best crops."""

    detection_id: str
    timestamp: float
    quality: float
    thumbnail: str
    features: CropFeatures


@dataclass
class Tracklet:
    """One person on one camera, as its local tracker followed them."""

    tracklet_id: str
    camera_id: str
    track_id: int
    first_seen: float
    last_seen: float
    last_frame: int
    feature_sum: np.ndarray  # quality-weighted sum of instance vectors
    weight_sum: float = 0.0
    n_crops: int = 0
    best: list[KeptCrop] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    arrived_at: float = 0.0  # wall clock when its last crop arrived
    read_at: float = 0.0  # wall clock when its latest crop's frame was read (0: unknown)
    ended: bool = False
    decided: bool = False  # matched at least once
    _feature: np.ndarray | None = field(default=None, repr=False, compare=False)
    best_changed: bool = field(default=True, repr=False, compare=False)  # since the store last wrote it

    @property
    def feature(self) -> np.ndarray:
        """The tracklet feature: the quality-weighted mean instance vector, L2-normalised."""
        if self._feature is None:
            f = self.feature_sum.astype(np.float64)
            self._feature = (f / max(float(np.linalg.norm(f)), 1e-12)).astype(np.float32)
        return self._feature

    @property
    def thumbnail(self) -> str:
        """The best crop's thumbnail."""
        return max(self.best, key=lambda c: c.quality).thumbnail if self.best else ""

    def seen_at(self, det: Detection) -> None:
        """The track was seen in `det` (a crop or a sighting): its last sighting and latest read time."""
        if det.timestamp >= self.last_seen:
            self.last_seen, self.last_frame = det.timestamp, det.frame_index
        self.read_at = max(self.read_at, det.read_at)

    def add(self, rec: FeatureRecord, quality: float, thumbnail: str, keep_best: int) -> None:
        det = rec.detection
        self.seen.add(det.detection_id)
        self.n_crops += 1
        self.first_seen = min(self.first_seen, det.timestamp)
        self.seen_at(det)
        inst = rec.instance.astype(np.float64)
        self.feature_sum = self.feature_sum + quality * inst / max(float(np.linalg.norm(inst)), 1e-12)
        self._feature = None
        self.weight_sum += quality
        if rec.parts is None or rec.pixels is None:
            return  # a model without parts/pixels: the tracklet feature is all there is
        kept = KeptCrop(det.detection_id, det.timestamp, quality, thumbnail, rec.crop_features())
        self.best = sorted([*self.best, kept], key=lambda c: (-c.quality, c.detection_id))[:keep_best]
        self.best_changed = self.best_changed or kept in self.best


class TrackletBook:
    """The open and ended tracklets of every camera; `add` is idempotent on the detection id."""

    def __init__(
        self,
        keep_best: int = 4,
        end_gap_s: float = 5.0,
        idle_end_s: float = 10.0,
        cameras: list[str] | None = None,
        known_segments: Callable[[str], int] | None = None,
        skew_s: float = 2.0,
    ) -> None:
        self.keep_best, self.end_gap_s, self.idle_end_s = keep_best, end_gap_s, idle_end_s
        self.skew_s = skew_s  # how far apart the cameras' clocks (and their records' order) may be
        self.last_arrival = 0.0  # wall clock of the latest crop
        self.known_segments = known_segments  # segments of a track key already stored (after eviction)
        self.horizon = -math.inf  # crops older than this are refused: their tracklets were evicted
        self.cameras = None if cameras is None else set(cameras)
        self.tracklets: dict[str, Tracklet] = {}
        self.pending: dict[str, PendingSightings] = {}  # track key -> sightings before its tracklet
        self.lapsed: dict[str, PendingSightings] = {}  # track key -> pending sightings no crop followed
        self.open: set[str] = set()
        self.current: dict[str, str] = {}  # tracklet key -> id of its latest segment
        self.segments: Counter[str] = Counter()
        self.camera_time: dict[str, float] = {}
        self.counts: Counter[str] = Counter()
        self.dirty: set[str] = set()

    def add(self, rec: FeatureRecord, thumbnail: str, now: float) -> Tracklet | None:
        """Add a crop to its tracklet; returns the tracklet, or None when the crop was refused (counted)."""
        det = rec.detection
        if self._unknown_camera(det):
            return None
        if det.timestamp < self.horizon:
            self.counts["expired"] += 1
            return None
        key = track_key(det)
        t = self.tracklets.get(self.current.get(key, ""))
        for seg in self._segments_of(key):  # redelivered (also into an earlier segment of this track)
            if det.detection_id in seg.seen:
                self.counts["duplicate"] += 1
                return seg
        if t is not None and self._beyond_gap(t, det):
            if t.ended or det.timestamp < t.first_seen - self.end_gap_s:
                self.counts["track_restart"] += 1
                t = None
        elif t is not None and t.ended:
            self.counts["late"] += 1
            return None
        if t is None:
            if key not in self.segments and self.known_segments is not None:
                self.segments[key] = self.known_segments(key)
            self.segments[key] += 1
            n = self.segments[key]
            tid = key if n == 1 else f"{key}+{n}"
            t = Tracklet(
                tid,
                det.camera_id,
                det.track_id,
                det.timestamp,
                det.timestamp,
                det.frame_index,
                np.zeros(rec.instance.shape[0], np.float64),
            )
            self.tracklets[tid], self.current[key] = t, tid
            self.open.add(tid)
            pending = self.pending.pop(key, None)
            lapsed = self.lapsed.pop(key, None)
            if pending is not None and det.timestamp - pending.last_seen <= self.end_gap_s:
                t.first_seen = min(t.first_seen, pending.first_seen)
            elif pending is not None:
                self.counts["sighting_unmatched"] += pending.count
            elif lapsed is not None and self._within(lapsed, det.timestamp):  # a rescued crop
                t.first_seen, t.last_seen = min(t.first_seen, lapsed.first_seen), lapsed.last_seen
                self.counts["sighting_rescued"] += lapsed.count
        elif det.timestamp < t.last_seen:
            self.counts["out_of_order"] += 1
        t.add(rec, crop_quality(det.box, det.score, rec.jpeg), thumbnail, self.keep_best)
        self._arrived(t, det, now)
        return t

    def sighted(self, det: Detection, now: float) -> Tracklet | None:
        """A shed crop of a track: its open tracklet now lasts until it (returned), or None (counted)."""
        if self._unknown_camera(det):
            return None
        key = track_key(det)
        t = self.tracklets.get(self.current.get(key, ""))
        if t is None or self._beyond_gap(t, det):  # no tracklet yet: its first crop is still to come
            self._pend(key, det)
            return None
        if t.ended:
            self.counts["sighting_unmatched"] += 1
            return None
        t.seen_at(det)
        self._arrived(t, det, now)
        return t

    def _pend(self, key: str, det: Detection) -> None:
        """Hold a sighting of a track without a tracklet (see the module doc)."""
        p = self.pending.get(key)
        if p is not None and det.timestamp - p.last_seen > self.end_gap_s:  # an earlier stretch: dropped
            self.counts["sighting_unmatched"] += p.count
            self._lapse(key, p)
            p = None
        if p is None:
            p = self.pending[key] = PendingSightings(det.camera_id, det.timestamp, det.timestamp)
        p.first_seen, p.last_seen = min(p.first_seen, det.timestamp), max(p.last_seen, det.timestamp)
        p.count += 1
        self._stream_at(det)

    def _unknown_camera(self, det: Detection) -> bool:
        """A camera outside `cameras` (counted)."""
        unknown = self.cameras is not None and det.camera_id not in self.cameras
        if unknown:
            self.counts["unknown_camera"] += 1
        return unknown

    def _beyond_gap(self, t: Tracklet, det: Detection) -> bool:
        """`det` is more than the end gap after or before `t`: not the same stretch of its track."""
        return det.timestamp > t.last_seen + self.end_gap_s or det.timestamp < t.first_seen - self.end_gap_s

    def _arrived(self, t: Tracklet, det: Detection, now: float) -> None:
        """`det` of `t` arrived at `now`: the wall and stream clocks move on, `t` is to be saved."""
        t.arrived_at = self.last_arrival = now
        self._stream_at(det)
        self.dirty.add(t.tracklet_id)

    def _stream_at(self, det: Detection) -> None:
        """`det`'s camera has streamed at least up to its time (what ends that camera's tracklets)."""
        self.camera_time[det.camera_id] = max(self.camera_time.get(det.camera_id, 0.0), det.timestamp)

    def _segments_of(self, key: str) -> list[Tracklet]:
        n = self.segments.get(key, 0)
        ids = (key if i == 1 else f"{key}+{i}" for i in range(n, 0, -1))
        return [self.tracklets[tid] for tid in ids if tid in self.tracklets]  # expired segments are forgotten

    def evict(self, tracklet_ids: list[str], horizon: float) -> None:
        """Forget ended tracklets (they stay in the identity store); crops older than `horizon` are refused
        from now on, so none can reopen them."""
        self.horizon = max(self.horizon, horizon)
        for tid in tracklet_ids:
            self.tracklets.pop(tid)
            self.open.discard(tid)
            self.dirty.discard(tid)
            key = tid.split("+")[0]
            if self.current.get(key) == tid:
                del self.current[key]
            if not self._segments_of(key):
                self.segments.pop(key, None)

    def due(self, now: float | None = None) -> list[Tracklet]:
        """Tracklets that have just ended, in the order they were last seen: their camera's stream ran
        `end_gap_s` past them; or the newest stream time of any camera ran `end_gap_s` + `skew_s` past
        them (records arrive in about the order their frames were read, so a camera with nothing of them
        since then had nothing to show); or (with `now`, when the caller has caught up with its input)
        nothing at all arrived for `idle_end_s` of wall time. Wall time alone never ends a tracklet while
        crops still arrive: a backlog upstream delays crops, it does not end tracks."""
        out = []
        newest = max(self.camera_time.values(), default=-math.inf)
        quiet = now is not None and now - self.last_arrival > self.idle_end_s
        for t in (self.tracklets[tid] for tid in self.open):
            if self._past(t.camera_id, t.last_seen, newest) or quiet:
                out.append(t)
        for key, p in list(self.pending.items()):  # no extracted crop came within the end gap
            if self._past(p.camera_id, p.last_seen, newest):
                self.counts["sighting_unmatched"] += p.count
                del self.pending[key]
                self._lapse(key, p)
        for key in [k for k, p in self.lapsed.items() if newest - p.last_seen > LAPSED_S]:
            del self.lapsed[key]
        return self._end(out)

    def _lapse(self, key: str, p: PendingSightings) -> None:
        """Remember a stretch of pending sightings that no crop followed (see the module doc)."""
        self.lapsed.pop(key, None)
        self.lapsed[key] = p
        if len(self.lapsed) > LAPSED_KEPT:
            del self.lapsed[next(iter(self.lapsed))]

    def _within(self, p: PendingSightings, at: float) -> bool:
        """`at` lies within the end gap of the stretch `p`."""
        return p.first_seen - self.end_gap_s <= at <= p.last_seen + self.end_gap_s

    def _past(self, camera_id: str, last_seen: float, newest: float) -> bool:
        """The stream ran the end gap past `last_seen`: on its camera, or on any (plus the skew)."""
        own = self.camera_time.get(camera_id, last_seen)
        return past_end_gap(own, newest, last_seen, self.end_gap_s, self.skew_s)

    def end_all(self) -> list[Tracklet]:
        """End every open tracklet (the stream is over)."""
        return self._end([self.tracklets[tid] for tid in self.open])

    def resume(self, now: float) -> None:
        """After a restart: the matcher's own downtime does not make an open tracklet idle."""
        self.last_arrival = now
        for tid in self.open:
            self.tracklets[tid].arrived_at = now

    def _end(self, tracklets: list[Tracklet]) -> list[Tracklet]:
        for t in tracklets:
            t.ended = True
            self.open.discard(t.tracklet_id)
            self.dirty.add(t.tracklet_id)
        return sorted(tracklets, key=lambda t: (t.last_seen, t.tracklet_id))


_FEATURE_FIELDS = ("instance", "parts", "part_visibility", "pixels", "pixel_coords")
_RAW_MAGIC = b"PGRKEPT1"  # features_to_bytes' own layout; a blob without it is an .npz (earlier stores)


def features_to_bytes(crops: list[KeptCrop]) -> bytes:
    """The kept crops' features as one blob for the identity store: a magic, a JSON header (each array's
    dtype and shape) and the arrays' bytes. An .npz took most of a store save's time (numpy's zip writer)."""
    arrays = [np.ascontiguousarray(getattr(c.features, name)) for c in crops for name in _FEATURE_FIELDS]
    header = json.dumps([[a.dtype.str, list(a.shape)] for a in arrays]).encode()
    return b"".join([_RAW_MAGIC, len(header).to_bytes(4, "little"), header, *(a.tobytes() for a in arrays)])


def features_from_bytes(raw: bytes, n: int) -> list[CropFeatures]:
    """The inverse of `features_to_bytes` for `n` crops (also reads the .npz of earlier stores)."""
    if not raw.startswith(_RAW_MAGIC):
        with np.load(io.BytesIO(raw)) as z:
            return [CropFeatures(**{k: z[f"{i}_{k}"] for k in _FEATURE_FIELDS}) for i in range(n)]
    start = len(_RAW_MAGIC) + 4  # the header, after its 4-byte length
    at = start + int.from_bytes(raw[len(_RAW_MAGIC) : start], "little")  # the arrays, after the header
    arrays = []
    for dtype, shape in json.loads(raw[start:at]):
        a = np.frombuffer(raw, dtype=np.dtype(dtype), count=math.prod(shape), offset=at).reshape(shape)
        arrays.append(a.copy())  # writable, and not a view that keeps the whole blob alive
        at += a.nbytes
    k = len(_FEATURE_FIELDS)
    per_crop = (arrays[i * k : (i + 1) * k] for i in range(n))
    return [CropFeatures(**dict(zip(_FEATURE_FIELDS, a, strict=True))) for a in per_crop]
