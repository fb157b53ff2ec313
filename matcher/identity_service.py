"""The identity side of the matcher: feed indexed crops to their tracklets, decide identities when a
tracklet is long enough and when it ends, send each event to the identities topic and save the state.

Order per batch (at-least-once): each decision's events are sent as soon as it is made (`decide`; the
matcher decides before it writes the batch's features and index rows, so an event does not wait for those
writes), then flushed and the state saved (`save`), then (in the caller) the offsets are committed. A crash
before the save replays the batch and sends the same events again (same seq, same ids); a crash after it
finds every crop already counted.
"""

from __future__ import annotations

import math
import time

from matcher.identities import IdentityBook, IdentityParams
from matcher.identity_store import IdentityStore
from matcher.tracklets import INPUT_REASONS, Tracklet, TrackletBook
from pgr.messages import IDENTITY_EVENTS, Detection, FeatureRecord, IdentityEvent, encode_identity
from pgr.metrics import PipelineMetrics
from pgr.settings import IdentitySettings
from pgr.transport import Producer
from reid.retrieval import RetrievalParams

TICK_S = 0.25  # how often an idle matcher looks for tracklets that ended
EVICT_STEP_S = 60.0  # stream seconds between evictions


def identity_params(cfg: IdentitySettings, retrieval: RetrievalParams) -> IdentityParams:
    """The matching parameters of a validated `matcher.identities` config."""
    return IdentityParams(
        threshold=cfg.threshold,
        merge_threshold=cfg.merge_threshold,
        shared_camera_direct=cfg.shared_camera_direct,
        window_s=cfg.window_s,
        candidates=cfg.candidates,
        instance_only=cfg.instance_only,
        overlapping=tuple(frozenset(g) for g in cfg.overlapping),
        transitions=cfg.transitions,
        retrieval=retrieval,
    )


class IdentityService:
    """Tracklets and identities of one matcher, persisted in `store`."""

    def __init__(
        self,
        cfg: IdentitySettings,
        retrieval: RetrievalParams,
        store: IdentityStore,
        producer: Producer,
        topic: str,
        metrics: PipelineMetrics,
    ) -> None:
        self.cfg, self.store, self.producer, self.topic, self.metrics = cfg, store, producer, topic, metrics
        self.tracklets = TrackletBook(
            cfg.keep_best,
            cfg.end_gap_s,
            cfg.idle_end_s,
            cfg.cameras,
            known_segments=store.segments,
            skew_s=cfg.camera_skew_s,
        )
        self.identities = IdentityBook(identity_params(cfg, retrieval))
        store.load(self.tracklets, self.identities)
        self.tracklets.resume(time.time())
        self._counted = dict(self.tracklets.counts)
        self._last_tick = 0.0
        for kind in IDENTITY_EVENTS:  # exported at 0: "no identity event for a while" is then a query
            metrics.identity_events.labels(kind)
        for reason in INPUT_REASONS:
            metrics.tracklet_input_refused.labels(reason)

    def add(self, records: list[tuple[FeatureRecord, str] | Detection]) -> list[IdentityEvent]:
        """`decide` then `save`: the records' decisions, sent, flushed and saved."""
        events = self.decide(records)
        self.save(events)
        return events

    def decide(self, records: list[tuple[FeatureRecord, str] | Detection]) -> list[IdentityEvent]:
        """Add indexed crops (record, thumbnail path) and sightings (a shed crop's Detection: its tracklet
        goes on), in stream order; decide what became long enough or ended. Each decision's events are
        sent when it is made, not flushed and not saved: call `save` before committing the records."""
        now = time.time()
        self.store.apply_erasures(self.tracklets, self.identities)
        events: list[IdentityEvent] = []
        for item in records:  # decisions after every crop: the same records, the same identities
            decided: list[IdentityEvent] = []
            if isinstance(item, Detection):
                self.tracklets.sighted(item, now)
            else:
                rec, thumbnail = item
                t = self.tracklets.add(rec, thumbnail, now)
                if t is not None and not t.decided and not t.ended and t.n_crops >= self.cfg.min_crops:
                    decided += self.identities.decide(t, ended=False, now=time.time())
            decided += self._ended(self.tracklets.due())  # stream time only: a backlog is not idleness
            self._send(decided)
            events += decided
        return events

    def save(self, events: list[IdentityEvent]) -> None:
        """Flush the events sent by `decide` and save the state with them (then the caller commits)."""
        self.producer.flush()
        self.store.save(self.tracklets, self.identities, events)
        self._evict()
        for reason, n in self.tracklets.counts.items():
            if n > self._counted.get(reason, 0):
                self.metrics.tracklet_input_refused.labels(reason).inc(n - self._counted.get(reason, 0))
                self._counted[reason] = n

    def tick(self) -> list[IdentityEvent]:
        """Decide the tracklets that ended while no crop came (call after a poll that came back empty)."""
        now = time.time()
        if now - self._last_tick < TICK_S:
            return []
        self._last_tick = now
        self.store.apply_erasures(self.tracklets, self.identities)
        events = self._ended(self.tracklets.due(now))
        if events or self.tracklets.dirty:
            self._publish(events)
        return events

    def finish(self) -> list[IdentityEvent]:
        """The stream is over: every open tracklet ends and is decided."""
        self.store.apply_erasures(self.tracklets, self.identities)
        events = self._ended(self.tracklets.end_all())
        self._publish(events)
        return events

    def _ended(self, tracklets: list[Tracklet]) -> list[IdentityEvent]:
        events = []
        for t in tracklets:
            events += self.identities.decide(t, ended=True, now=time.time())
        return events

    def horizon(self) -> float:
        """Stream time before which no identity can match a tracklet still to come: the window before the
        oldest open tracklet and before the slowest camera (cameras silent for a window left out), less
        the end gap a crop may come late by."""
        book = self.tracklets
        if not book.camera_time:
            return -math.inf
        newest = max(book.camera_time.values())
        live = [t for t in book.camera_time.values() if t >= newest - self.cfg.window_s]
        oldest_open = [book.tracklets[tid].first_seen for tid in book.open]
        return min(live + oldest_open) - self.cfg.window_s - self.cfg.end_gap_s

    def _evict(self) -> None:
        """Forget identities (and their tracklets) out of every future window: memory stays bounded by the
        window; the store keeps them."""
        horizon = self.horizon()
        if horizon < self.tracklets.horizon + EVICT_STEP_S:
            return
        gone = self.identities.evict_before(horizon)
        self.tracklets.evict(gone, horizon)

    def _publish(self, events: list[IdentityEvent]) -> None:
        self._send(events)
        self.save(events)

    def _send(self, events: list[IdentityEvent]) -> None:
        """To the identities topic, keyed by tracklet (not flushed)."""
        for e in events:
            self.producer.send(self.topic, encode_identity(e), key=e.tracklet_id.encode())
            self.metrics.identity_events.labels(e.kind).inc()
            t = self.tracklets.tracklets.get(e.tracklet_id)
            if e.ended and t is not None and t.read_at > 0:
                self.metrics.tracklet_end_to_identity.observe(e.decided_at - t.read_at)
