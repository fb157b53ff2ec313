"""Global identities, online: a tracklet that is long enough, and again when it ends, is matched against
the identities seen recently, with progressive retrieval; above the threshold it joins the best one, else
it founds one. Later evidence moves a tracklet or merges two identities; every change is an IdentityEvent.

Matching a tracklet T against identity I (`IdentityBook.scores`):
1. stage 0: s_ins of T's feature against I's (the mean of its tracklets' features) for every candidate;
2. the `candidates` best identities: T's kept crops against theirs by progressive retrieval (instance,
   parts, pixels; reid/retrieval.py), with N1 = N2 = all their crops so every score is a stage-2 score;
   an identity's score is the mean over T's crops of the best score among the identity's crops.
With `instance_only`, step 2 uses s_ins alone (the baseline that shows what parts and pixels add).

Later evidence: a tracklet decided early (when long enough) is decided again at its end, and may then move
to another identity, or merge its identity with another when it still matches its own at `merge_threshold`
or above; and a tracklet that matches two identities at or above `merge_threshold` (a bridge: one person
seen by two cameras whose views did not match, and then by a third that matches both) merges them, unless
they conflict. Every merge needs `merge_threshold`, a join only `threshold`. With `shared_camera_direct`, a
merge of two identities that were both seen on one camera also needs them to match each other without T
(`direct`: their kept crops against each other) at `threshold`: seen by the same camera, one person's
views agree, so when those two do not, one tracklet's few crops must not tie them together (on the Duke
training replay this keeps IDF1 and raises precision; RESULTS.md, IDENTITIES).

Candidates: identities with a tracklet seen within `window_s` before T began, and no conflict with T: an
identity is never on one camera twice at once, nor on two cameras whose fields of view do not overlap
(`overlapping` groups) at once; with a camera-transition map, the camera it was last seen on before T
must lead to T's camera in at least the listed seconds.

Identity ids derive from the tracklet that founded them (`id:<tracklet id>`), so a replay that decides
the same way names the same identities and never founds a second one for a tracklet.

>>> book = IdentityBook(IdentityParams(threshold=0.8))  # doctest: +SKIP
>>> events = book.decide(tracklet, ended=True, now=time.time())  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from matcher.tracklets import Tracklet
from pgr.messages import CropFeatures, IdentityEvent
from reid.retrieval import GalleryFeatures, RetrievalParams, progressive_retrieval
from reid.similarity import s_ins


@dataclass(frozen=True)
class IdentityParams:
    """How tracklets become identities (matcher.identities in the config)."""

    threshold: float = 0.78
    merge_threshold: float | None = 0.80  # bridge merges at or above this (None: `threshold`)
    shared_camera_direct: bool = True  # merging identities seen on one camera needs a direct match too
    window_s: float = 1800.0
    candidates: int = 5
    instance_only: bool = False
    overlapping: tuple[frozenset[str], ...] = ()
    transitions: dict[str, float] | None = None
    crops_per_identity: int = 4
    retrieval: RetrievalParams = field(default_factory=RetrievalParams)


class IdentityBook:
    """Which tracklet belongs to which identity, and the decisions that change it."""

    def __init__(self, params: IdentityParams) -> None:
        self.params = params
        self.tracklets: dict[str, Tracklet] = {}
        self.owner: dict[str, str] = {}  # tracklet id -> identity id
        self.members: dict[str, list[str]] = {}  # identity id -> tracklet ids, in joining order
        self.seq = 0
        self._sums: dict[str, tuple[tuple, np.ndarray]] = {}  # identity -> (members and sizes, feature sum)

    # ---- queries -------------------------------------------------------------------------------------

    def identity_feature(self, identity_id: str) -> np.ndarray:
        """The mean of the identity's tracklet features, L2-normalised."""
        return self._feature_without(identity_id, "")

    def conflicts(self, t: Tracklet, identity_id: str) -> bool:
        """Whether T cannot be the person of `identity_id` (two places at once, or an impossible move)."""
        others = [self.tracklets[m] for m in self.members[identity_id] if m != t.tracklet_id]
        for m in others:
            overlap = m.first_seen <= t.last_seen and t.first_seen <= m.last_seen
            if overlap and (m.camera_id == t.camera_id or not self._overlapping(m.camera_id, t.camera_id)):
                return True
        transitions = self.params.transitions
        before = [m for m in others if m.last_seen < t.first_seen]
        if transitions is not None and before:
            last = max(before, key=lambda m: m.last_seen)
            if last.camera_id != t.camera_id:
                need = transitions.get(f"{last.camera_id}>{t.camera_id}")
                if need is None or t.first_seen - last.last_seen < need:
                    return True
        return False

    def _overlapping(self, a: str, b: str) -> bool:
        return any(a in g and b in g for g in self.params.overlapping)

    def in_window(self, t: Tracklet) -> list[str]:
        """Identities with a tracklet (other than T) seen within the window before T, sorted."""
        since, tid, tracklets = t.first_seen - self.params.window_s, t.tracklet_id, self.tracklets
        out = []
        # any member but T seen since; a loop that stops at the first (every decision runs it over every
        # identity held)
        for ident, members in self.members.items():
            for m in members:
                if m != tid and tracklets[m].last_seen >= since:
                    out.append(ident)
                    break
        return sorted(out)

    def candidates(self, t: Tracklet) -> list[str]:
        """Identities seen within the window before T, without a conflict with T (T's own included)."""
        return [i for i in self.in_window(t) if not self.conflicts(t, i)]

    def scores(self, t: Tracklet, identities: list[str], check_conflicts: bool = False) -> dict[str, float]:
        """T's match score against each identity (see the module docstring); with `check_conflicts`, the
        identities in conflict with T are left out (checked in stage-0 order, only until `candidates`
        are found: the same outcome as filtering them all first, for a fraction of the checks)."""
        if not identities:
            return {}
        feats = np.stack([self._sum_without(i, t.tracklet_id) for i in identities])
        feats = (feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        stage0 = s_ins(torch.from_numpy(t.feature), torch.from_numpy(feats)).numpy()
        top: list[str] = []
        for i in np.argsort(-stage0, kind="stable"):
            if len(top) == self.params.candidates:
                break
            if not (check_conflicts and self.conflicts(t, identities[i])):
                top.append(identities[i])
        crops, owners = [], []
        for ident in top:
            kept = self._kept_crops(ident, t.tracklet_id)
            crops += kept
            owners += [ident] * len(kept)
        if not t.best or not crops:  # no parts/pixels (a model without them): the tracklet features decide
            return {ident: float(stage0[identities.index(ident)]) for ident in top}
        pair_np = self._pair_scores([c.features for c in t.best], crops)
        out = {}
        for ident in top:
            cols = [j for j, o in enumerate(owners) if o == ident]
            if cols:
                out[ident] = float(pair_np[:, cols].max(axis=1).mean())
        return out

    def direct(self, a: str, b: str, without: str) -> float:
        """How well identities A and B match each other without tracklet `without` (the one that would
        merge them): the mean, both ways, of each kept crop's best score among the other's; the cosine of
        their features (s_ins) when either has no kept crops with parts and pixels."""
        crops_a, crops_b = self._kept_crops(a, without), self._kept_crops(b, without)
        if not crops_a or not crops_b:
            fa, fb = (torch.from_numpy(self._feature_without(i, without))[None] for i in (a, b))
            return float(s_ins(fa, fb)[0, 0])
        pair = self._pair_scores(crops_a, crops_b)
        return float(0.5 * (pair.max(axis=1).mean() + pair.max(axis=0).mean()))

    def _kept_crops(self, identity_id: str, without: str) -> list[CropFeatures]:
        """The identity's best kept crops' features (`crops_per_identity`), tracklet `without`'s left out."""
        kept = [c for m in self.members[identity_id] if m != without for c in self.tracklets[m].best]
        kept = sorted(kept, key=lambda c: (-c.quality, c.detection_id))[: self.params.crops_per_identity]
        return [c.features for c in kept]

    def _pair_scores(self, query: list[CropFeatures], gallery: list[CropFeatures]) -> np.ndarray:
        """Every query crop against every gallery crop: progressive retrieval with N1 = N2 = all of them
        (every score a stage-2 score), or s_ins alone with `instance_only`."""
        q, g = GalleryFeatures.from_crop_features(query), GalleryFeatures.from_crop_features(gallery)
        if self.params.instance_only:
            return s_ins(q.instances, g.instances).numpy()
        n, p = len(g), self.params.retrieval
        result = progressive_retrieval(q, g, RetrievalParams(n, p.a1, n, p.a2, p.eps, p.part_score))
        return torch.empty_like(result.score).scatter_(1, result.indices, result.score).numpy()

    def _feature_without(self, identity_id: str, tracklet_id: str) -> np.ndarray:
        f = self._sum_without(identity_id, tracklet_id)
        return (f / max(float(np.linalg.norm(f)), 1e-12)).astype(np.float32)

    def _sum_without(self, identity_id: str, tracklet_id: str) -> np.ndarray:
        """The sum of the identity's tracklet features but T's (cached while its members do not change)."""
        members, tracklets = self.members[identity_id], self.tracklets
        # the members and their crop counts: a tracklet's feature changes only with a crop added
        key = (tuple(members), [tracklets[m].n_crops for m in members])
        cached = self._sums.get(identity_id)
        if cached is None or cached[0] != key:
            total = np.sum([tracklets[m].feature.astype(np.float64) for m in members], axis=0)
            cached = self._sums[identity_id] = (key, total)
        if tracklet_id in members:
            return cached[1] - self.tracklets[tracklet_id].feature
        return cached[1]

    # ---- decisions -----------------------------------------------------------------------------------

    def decide(self, t: Tracklet, ended: bool, now: float) -> list[IdentityEvent]:
        """Match T (long enough, or ended) and apply the outcome; returns the events, in order."""
        self.tracklets[t.tracklet_id] = t
        scores = self.scores(t, self.in_window(t), check_conflicts=True)
        best = max(scores, key=lambda i: (scores[i], i)) if scores else None
        joined = best is not None and scores[best] >= self.params.threshold
        t.decided = True
        events = self._apply(t, scores, best if joined else None, ended, now)
        if joined:
            events += self._bridge(t, scores, ended, now)
        return events

    def _apply(
        self, t: Tracklet, scores: dict[str, float], best: str | None, ended: bool, now: float
    ) -> list[IdentityEvent]:
        """Join `best` (None: found, or stay), move to it, or merge T's identity into it."""
        current = self.owner.get(t.tracklet_id)
        if current is None:
            if best is not None:
                return [self._join(t, best, "joined", scores[best], ended, now)]
            return [self._found(t, ended, now)]
        if best is None or best == current:
            if not ended:
                return []
            return [self._event("confirmed", current, t, scores.get(current, 0.0), ended, now)]
        # the best identity is another one
        if len(self.members[current]) == 1:  # T alone: leave its own identity for the better one
            del self.members[current]
            self._sums.pop(current, None)
            return [self._join(t, best, "moved", scores[best], ended, now, previous=current)]
        # merging two identities needs the merge threshold: a tracklet's join just above `threshold` must not
        # take a whole identity along when its end shows it belongs elsewhere
        if scores.get(current, 0.0) >= self._merge_limit and self._may_merge(current, best, t):
            return [self._merge(t, current, best, scores[best], ended, now)]
        self.members[current].remove(t.tracklet_id)
        return [self._join(t, best, "moved", scores[best], ended, now, previous=current)]

    def _bridge(self, t: Tracklet, scores: dict[str, float], ended: bool, now: float) -> list[IdentityEvent]:
        """T, now in an identity, matches other identities too (at or above `merge_threshold`): T is the
        evidence that they are one person, so each one without a conflict is merged with T's identity."""
        limit = self._merge_limit
        events = []
        for other in sorted(scores, key=lambda i: (-scores[i], i)):
            mine = self.owner[t.tracklet_id]
            if scores[other] < limit or other == mine or other not in self.members:
                continue
            if self._may_merge(other, mine, t):
                events.append(self._merge(t, mine, other, scores[other], ended, now))
        return events

    @property
    def _merge_limit(self) -> float:
        """The least score that merges two identities (`merge_threshold`, else `threshold`)."""
        p = self.params
        return p.threshold if p.merge_threshold is None else p.merge_threshold

    def evict_before(self, horizon: float) -> list[str]:
        """Forget identities whose tracklets all ended before `horizon` (no later tracklet can match them:
        they are out of every future window); returns their tracklet ids."""
        gone = []
        for ident, members in list(self.members.items()):
            ts = [self.tracklets[m] for m in members]
            if all(t.ended for t in ts) and max(t.last_seen for t in ts) < horizon:
                del self.members[ident]
                self._sums.pop(ident, None)
                for m in members:
                    del self.owner[m], self.tracklets[m]
                gone += members
        return gone

    def _may_merge(self, a: str, b: str, t: Tracklet) -> bool:
        """Whether T's evidence may merge identities A and B: no conflict between them, and (with
        `shared_camera_direct`, when both were seen on one camera) they match each other without T."""
        if self._identities_conflict(a, b):
            return False
        tid = t.tracklet_id
        if not self.params.shared_camera_direct or not self._cameras(a, tid) & self._cameras(b, tid):
            return True
        return self.direct(a, b, tid) >= self.params.threshold

    def _cameras(self, identity_id: str, without: str) -> set[str]:
        """The cameras the identity's tracklets were seen on, tracklet `without`'s left out."""
        return {self.tracklets[m].camera_id for m in self.members[identity_id] if m != without}

    def _identities_conflict(self, a: str, b: str) -> bool:
        return any(self.conflicts(self.tracklets[m], b) for m in self.members[a])

    def _found(self, t: Tracklet, ended: bool, now: float) -> IdentityEvent:
        ident = f"id:{t.tracklet_id}"
        self.members[ident] = [t.tracklet_id]
        self.owner[t.tracklet_id] = ident
        return self._event("created", ident, t, 0.0, ended, now)

    def _join(
        self, t: Tracklet, ident: str, kind: str, score: float, ended: bool, now: float, previous: str = ""
    ) -> IdentityEvent:
        self.members[ident].append(t.tracklet_id)
        self.owner[t.tracklet_id] = ident
        return self._event(kind, ident, t, score, ended, now, previous)

    def _merge(self, t: Tracklet, a: str, b: str, score: float, ended: bool, now: float) -> IdentityEvent:
        """T's identity and the other one are one person: the older (first founded) absorbs the other."""
        keep, gone = sorted((a, b), key=lambda i: (self.tracklets[self.members[i][0]].first_seen, i))
        self._sums.pop(gone, None)
        for m in self.members.pop(gone):
            self.members[keep].append(m)
            self.owner[m] = keep
        return self._event("merged", keep, t, score, ended, now, gone)

    def _event(
        self,
        kind: str,
        ident: str,
        t: Tracklet,
        score: float,
        ended: bool,
        now: float,
        previous: str = "",
    ) -> IdentityEvent:
        self.seq += 1
        return IdentityEvent(
            kind=kind,
            identity_id=ident,
            tracklet_id=t.tracklet_id,
            camera_id=t.camera_id,
            first_seen=t.first_seen,
            last_seen=t.last_seen,
            score=float(score),
            seq=self.seq,
            previous_id=previous,
            thumbnail=t.thumbnail,
            decided_at=now,
            ended=ended,
        )
