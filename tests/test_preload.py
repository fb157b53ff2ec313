"""The search service's preload: what a search reads is mapped into memory once, new segments as they come,
and searches read the same rows after it."""

from __future__ import annotations

import ctypes
import sys
import threading

import numpy as np

from matcher.embedded_index import EmbeddedIndex
from matcher.feature_store import FeatureStore
from matcher.preload import keep_loaded, preload
from tests.test_embedded_index import DIM, make_rows
from tests.test_feature_store import crop


def _resident(arr: np.ndarray) -> float:
    """The fraction of the pages under `arr` that are in memory (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pages = (arr.nbytes + 4095) // 4096
    vec = (ctypes.c_ubyte * pages)()
    assert (
        libc.mincore(ctypes.c_void_p(arr.__array_interface__["data"][0]), ctypes.c_size_t(arr.nbytes), vec)
        == 0
    )
    return float((np.frombuffer(vec, np.uint8) & 1).mean())


def test_preload_maps_each_segment_once_and_new_rows_later(tmp_path):
    index = EmbeddedIndex(tmp_path / "idx", dim=DIM, model="m", tail_rows=100)
    features = FeatureStore(tmp_path / "features", tail_rows=100)
    rows = make_rows(250)
    index.upsert(rows)
    features.save_many([(r.detection.detection_id, crop(i, d=DIM)) for i, r in enumerate(rows)])
    before = index.search_ids(rows[7].instance, 20).ids
    done, _ = preload(index, features)
    # 250 rows: vectors (16 float32), camera, time; instance, parts (5 x 16 float16), visibility
    assert done >= 250 * (16 * 4 + 4 + 8 + 16 * 4 + 5 * 16 * 2 + 5)
    assert preload(index, features)[0] == 0  # nothing new
    more = make_rows(30, start=250)
    index.upsert(more)
    features.save_many([(r.detection.detection_id, crop(i, d=DIM)) for i, r in enumerate(more)])
    assert 0 < preload(index, features)[0] < done  # the tail that grew, not everything again
    assert index.search_ids(rows[7].instance, 20).ids[:20] == before
    got = features.load_rows([r.detection.detection_id for r in rows[:5]])
    assert got is not None and got.found.all()
    if sys.platform == "linux":
        for seg in features.store.snapshot().segments:
            assert _resident(seg.array("parts")) == 1.0


def test_keep_loaded_runs_until_stopped_and_survives_an_empty_store(tmp_path, caplog):
    index = EmbeddedIndex(tmp_path / "idx", dim=DIM, model="m")
    features = FeatureStore(tmp_path / "features")
    stop = threading.Event()
    caplog.set_level("INFO", logger="matcher.preload")
    thread = threading.Thread(target=keep_loaded, args=(index, features, stop, 0.05))
    thread.start()
    index.upsert(make_rows(10))
    stop.wait(0.3)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert any("search memory: mapped" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
