"""Privacy: erase detections on request and apply the retention period.

Everything stored about a detection goes together: its index row (instance vector and metadata), its
thumbnail and its part/pixel features. Files are removed before the row, so a crash in between leaves a
row without files (which search and `check_rows_against_files` tolerate), never files without a row that
nothing would find again to delete. The feature store and the embedded index first mark rows deleted, then
compact: the segments that held them are rewritten without them, so the erased data leave the disk before
the call returns (`erase_ids` is the one call for other erasures, e.g. of an identity's detections).
"""

from __future__ import annotations

from matcher.feature_store import FeatureStore
from matcher.index import IndexedDetection
from matcher.open_index import AnyIndex
from matcher.thumbnails import ThumbnailStore


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


def purge_expired(
    index: AnyIndex,
    thumbnails: ThumbnailStore,
    features: FeatureStore,
    now: float,
    retention_days: float,
    batch: int = 4096,
) -> int:
    """Erase every detection seen more than `retention_days` before `now`; returns how many."""
    cutoff = now - retention_days * 86400.0
    total = 0
    while expired := index.older_than(cutoff, limit=batch):
        total += erase(index, thumbnails, features, expired, compact=False)
        if len(expired) < batch:
            break
    if total:
        features.compact()
        index.compact()
    return total
