"""What the server holds for its lifetime: settings, the index it owns, the stores, the model, the log."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from matcher.feature_store import FeatureStore
from matcher.open_index import AnyIndex
from matcher.retention import Retention, purge_expired
from matcher.thumbnails import ThumbnailStore
from pgr.app.indexing import IndexedFile, load_state
from pgr.app.web.audit import AuditLog
from pgr.app.web.auth import LoginThrottle, Sessions, UserStore
from pgr.metrics import ServeMetrics
from pgr.settings import Settings
from reid.extractor import FeatureExtractor
from reid.retrieval import RetrievalParams

log = logging.getLogger(__name__)


@dataclass
class AppState:
    """One per app. `lock` serialises the index and the model (one search at a time; the model is not
    re-entrant and a milvus-lite file has one client)."""

    settings: Settings
    index: AnyIndex
    thumbnails: ThumbnailStore
    features: FeatureStore
    extractor: FeatureExtractor
    params: RetrievalParams
    users: UserStore
    sessions: Sessions
    audit: AuditLog
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    lock: threading.RLock = field(default_factory=threading.RLock)
    last_purge: dict = field(default_factory=dict)

    def indexed_files(self) -> dict[str, IndexedFile]:
        """What `pgr index` recorded, by file tag (re-read: an index run may have added files)."""
        return load_state(self.settings.indexed_files)

    def cameras(self) -> list[str]:
        """Cameras this system knows: the config's and those of indexed files."""
        ids = {c.id for c in self.settings.cameras} | {f.camera for f in self.indexed_files().values()}
        return sorted(ids)

    def retention(self) -> Retention:
        """The configured retention: serve.retention_days, overridden per camera."""
        return Retention.from_settings(self.settings.serve)

    def purge(self, user: str = "retention") -> int:
        """Apply the retention periods now (audited); returns how many detections were deleted."""
        retention = self.retention()
        if not retention.applies:
            return 0
        now = time.time()
        cutoffs = retention.cutoffs(now)
        with self.lock:
            purged = purge_expired(
                self.index,
                self.thumbnails,
                self.features,
                now,
                retention,
                self.settings.matcher.identity_store_path,
            )
        self.last_purge = {"time": now, "deleted": purged.detections, "tracklets": purged.tracklets}
        self.audit.append(
            user,
            "retention",
            retention_days=retention.days,
            retention_days_by_camera=retention.by_camera,
            cutoff=cutoffs.default,
            cutoffs_by_camera=cutoffs.cameras,
            deleted=purged.detections,
            tracklets=purged.tracklets,
            identities=purged.identities,
            kept_crops=purged.crops,
        )
        if purged.detections or purged.tracklets:
            log.info(
                "retention: deleted %d detections and %d tracklets past their retention period",
                purged.detections,
                purged.tracklets,
            )
        return purged.detections
