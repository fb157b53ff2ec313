"""Privacy: erase detections on request and apply the retention period.

Everything stored about a detection goes together: its index row (instance vector and metadata), its
thumbnail and its part/pixel features. Files are removed before the row, so a crash in between leaves a
row without files (which search and `check_rows_against_files` tolerate), never files without a row that
nothing would find again to delete.
"""

from __future__ import annotations

from matcher.feature_store import FeatureStore
from matcher.index import DetectionIndex, IndexedDetection
from matcher.thumbnails import ThumbnailStore


def erase(
    index: DetectionIndex,
    thumbnails: ThumbnailStore,
    features: FeatureStore,
    detections: list[IndexedDetection],
) -> int:
    """Delete the detections' files and rows; returns how many rows were deleted."""
    for d in detections:
        thumbnails.remove(d.camera_id, d.detection_id)
        features.remove(d.camera_id, d.detection_id)
    return index.delete([d.detection_id for d in detections])


def erase_ids(
    index: DetectionIndex, thumbnails: ThumbnailStore, features: FeatureStore, ids: list[str]
) -> list[str]:
    """Erase the detections with these ids; returns the ids that were found (and are now gone)."""
    found = index.get(ids)
    erase(index, thumbnails, features, found)
    return [d.detection_id for d in found]


def purge_expired(
    index: DetectionIndex,
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
        total += erase(index, thumbnails, features, expired)
        if len(expired) < batch:
            break
    return total
