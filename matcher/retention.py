"""Privacy: erase detections (the files and the row together) and apply the retention periods.

Everything stored about a detection goes together: its index row (instance vector and metadata), its
thumbnail and its part/pixel features. Files are removed before the row, so a crash in between leaves a
row without files (which search and `check_rows_against_files` tolerate), never files without a row that
nothing would find again to delete. The feature store and the embedded index first mark rows deleted, then
compact: the segments that held them are rewritten without them, so the erased data leave the disk before
the call returns (`erase`, `erase_ids`; matcher/erasure.py erases an identity's detections through them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from matcher.feature_store import FeatureStore
from matcher.forget import forget_expired_in_store
from matcher.identity_store import overwriting
from matcher.index import IndexedDetection
from matcher.open_index import AnyIndex
from matcher.thumbnails import ThumbnailStore
from matcher.tombstones import Cutoffs, record_retention
from pgr.settings import ServeSettings

DAY = 86400.0


def erase(
    index: AnyIndex,
    thumbnails: ThumbnailStore,
    features: FeatureStore,
    detections: list[IndexedDetection],
    compact: bool = True,
) -> int:
    """Delete the detections' files and rows; returns how many rows were deleted. With `compact` (the
    default) the deleted data leave the disk now; a caller erasing in several batches may compact once."""
    for d in detections:
        thumbnails.remove(d.camera_id, d.detection_id)
    ids = [d.detection_id for d in detections]
    features.delete(ids)
    deleted = index.delete(ids)
    if compact and ids:
        features.compact()
        index.compact()
    return deleted


def erase_ids(
    index: AnyIndex, thumbnails: ThumbnailStore, features: FeatureStore, ids: list[str]
) -> list[str]:
    """Erase the detections with these ids (row, thumbnail, features; from the disk, not only from search);
    returns the ids that were found (and are now gone)."""
    found = index.get(ids)
    erase(index, thumbnails, features, found)
    return [d.detection_id for d in found]


@dataclass(frozen=True)
class Retention:
    """How long what the cameras saw is kept, in days: `days` for every camera (None: kept until erased),
    `by_camera` overriding it for the cameras it names (None there: that camera's are kept)."""

    days: float | None = None
    by_camera: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, serve: ServeSettings) -> Retention:
        """serve.retention_days, overridden per camera by serve.retention_days_by_camera."""
        return cls(serve.retention_days, dict(serve.retention_days_by_camera))

    def days_of(self, camera_id: str) -> float | None:
        """How long one camera's detections are kept (None: until erased)."""
        return self.by_camera.get(camera_id, self.days)

    @property
    def applies(self) -> bool:
        """Whether anything ever expires."""
        return self.days is not None or any(d is not None for d in self.by_camera.values())

    def cutoffs(self, now: float) -> Cutoffs:
        """The times before which what each camera saw has expired, at `now`."""

        def cut(days: float | None) -> float | None:
            return None if days is None else now - days * DAY

        return Cutoffs(cut(self.days), {cam: cut(d) for cam, d in self.by_camera.items()})


@dataclass
class Purged:
    """What one retention run deleted."""

    detections: int = 0  # index rows, each with its thumbnail and features
    tracklets: int = 0  # in the identity store, with their events
    identities: int = 0  # left without tracklets
    crops: int = 0  # kept crops taken out of tracklets that go on


def purge_expired(
    index: AnyIndex,
    thumbnails: ThumbnailStore,
    features: FeatureStore,
    now: float,
    retention: Retention,
    identity_store: Path | None = None,
    batch: int = 4096,
) -> Purged:
    """Erase every detection seen before its camera's cutoff, and in the identity store (when there is one)
    the tracklets last seen before it and the kept crops seen before it (a running matcher does the same in
    its memory at its next save: matcher/forget.py)."""
    cutoffs = retention.cutoffs(now)
    out = Purged()
    if identity_store is not None and Path(identity_store).is_file():
        with overwriting(identity_store) as db:
            forgot = forget_expired_in_store(db, cutoffs)
            record_retention(db, cutoffs)
        out.tracklets, out.identities, out.crops = len(forgot.tracklets), len(forgot.identities), forgot.crops
    for cam, cutoff in cutoffs.cameras.items():
        if cutoff is not None:
            out.detections += _purge(index, thumbnails, features, cutoff, batch, cameras=[cam])
    if cutoffs.default is not None:
        out.detections += _purge(
            index, thumbnails, features, cutoffs.default, batch, exclude=list(cutoffs.cameras)
        )
    return out


def _purge(
    index: AnyIndex,
    thumbnails: ThumbnailStore,
    features: FeatureStore,
    cutoff: float,
    batch: int,
    **which,
) -> int:
    total = 0
    while expired := index.older_than(cutoff, limit=batch, **which):
        total += erase(index, thumbnails, features, expired, compact=False)
        if len(expired) < batch:
            break
    if total:
        features.compact()
        index.compact()
    return total
