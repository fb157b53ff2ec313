"""What the server holds for its lifetime: settings, the index it owns, the stores, the model, the log."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from matcher.feature_store import FeatureStore
from matcher.open_index import AnyIndex
from matcher.retention import purge_expired
from matcher.thumbnails import ThumbnailStore
from pgr.app.indexing import IndexedFile, load_state
from pgr.app.web.audit import AuditLog
from pgr.app.web.auth import LoginThrottle, Sessions, UserStore
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
    lock: threading.RLock = field(default_factory=threading.RLock)
    last_purge: dict = field(default_factory=dict)

    def indexed_files(self) -> dict[str, IndexedFile]:
        """What `pgr index` recorded, by file tag (re-read: an index run may have added files)."""
        return load_state(self.settings.indexed_files)

    def cameras(self) -> list[str]:
        """Cameras this system knows: the config's and those of indexed files."""
        ids = {c.id for c in self.settings.cameras} | {f.camera for f in self.indexed_files().values()}
        return sorted(ids)

    def purge(self, user: str = "retention") -> int:
        """Apply the retention period now (audited); returns how many detections were deleted."""
        days = self.settings.serve.retention_days
        if days is None:
            return 0
        now = time.time()
        with self.lock:
            deleted = purge_expired(self.index, self.thumbnails, self.features, now, days)
        self.last_purge = {"time": now, "deleted": deleted}
        self.audit.append(user, "retention", retention_days=days, cutoff=now - days * 86400, deleted=deleted)
        if deleted:
            log.info("retention: deleted %d detections seen more than %g days ago", deleted, days)
        return deleted
