"""Keep what a search reads in memory: the index's vectors and the candidates' part features.

A search at 1M rows reads 1,000 candidates' rows scattered over gigabytes; a page the kernel dropped costs a
read from the disk (ms each, BENCHMARKS.md "Search"). The search service therefore maps those columns into
its memory at start, and maps each new segment as it appears: 4.6 KB a detection of the default model
(the index's vector, and the store's instance, parts and visibility), 4.6 GB at 1M rows. Pixels stay on
the disk: a search reads those of the N2 best candidates only. Milvus keeps its loaded collection in
memory itself (its `preload` is a no-op).
"""

from __future__ import annotations

import logging
import threading
import time

from matcher.feature_store import FeatureStore
from matcher.index import DetectionIndex

log = logging.getLogger(__name__)


def preload(index: DetectionIndex, features: FeatureStore) -> tuple[int, float]:
    """Map what is not mapped yet; returns the bytes mapped and the seconds it took."""
    t = time.perf_counter()
    done = index.preload() + features.preload()
    return done, time.perf_counter() - t


def keep_loaded(index: DetectionIndex, features: FeatureStore, stop: threading.Event, every_s: float) -> None:
    """Preload now and then every `every_s` (the segments written since) until `stop` is set; a failure
    (a segment compacted away meanwhile, a read error) is logged and tried again at the next round."""
    first = True
    while True:
        try:
            done, took = preload(index, features)
            if first or done:
                log.info("search memory: mapped %.2f GB of index and features in %.1f s", done / 1e9, took)
            first = False
        except Exception:
            log.exception("search memory: preloading failed; trying again in %.0f s", every_s)
        if stop.wait(every_s):
            return
