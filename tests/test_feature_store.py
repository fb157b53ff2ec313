"""The feature store: row-addressable parts and pixels (a variable number of cells per detection), read back
exactly and in the order asked, idempotent, refusing other sizes with the reason, erasable from the disk,
and a full disk that loses nothing acknowledged, in the store and through the matcher."""

from __future__ import annotations

import errno
import threading

import numpy as np
import pytest

from matcher.embedded_index import EmbeddedIndex
from matcher.feature_store import FeatureStore
from matcher.service import MatcherWorker
from matcher.thumbnails import ThumbnailStore
from pgr.consume_loop import consume_loop
from pgr.errors import StorageUnavailable
from pgr.messages import CropFeatures, Detection, FeatureRecord, encode_feature
from pgr.metrics import PipelineMetrics
from pgr.transport import InProcessBus


def crop(seed: int, cells: int | None = None, d: int = 32, dp: int = 8) -> CropFeatures:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 40)) if cells is None else cells
    return CropFeatures(
        instance=rng.standard_normal(d).astype(np.float32),
        parts=rng.standard_normal((5, d)).astype(np.float16),
        part_visibility=rng.random(5) > 0.3,
        pixels=rng.standard_normal((n, dp)).astype(np.float16),
        pixel_coords=rng.integers(0, 16, (n, 2)).astype(np.int16),
    )


def same(a: CropFeatures, b: CropFeatures, instance: bool = True) -> bool:
    keys = ("parts", "part_visibility", "pixels", "pixel_coords") + (("instance",) if instance else ())
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in keys)


def test_features_read_back_exactly_in_the_order_asked(tmp_path):
    store = FeatureStore(tmp_path / "f", tail_rows=30)  # several segments
    feats = {f"c:{i}": crop(i, cells=0 if i == 7 else None) for i in range(100)}
    items = list(feats.items())
    for start in range(0, 100, 13):
        assert store.save_many(items[start : start + 13]) == {}
    reader = FeatureStore(tmp_path / "f")  # another instance (another process would do the same)
    for det_id in ("c:0", "c:7", "c:99", "c:55"):
        assert same(reader.load("cam", det_id), feats[det_id])
    assert reader.load("cam", "missing") is None
    ask = ["c:42", "nope", "c:3", "c:7", "c:99"]
    rows = reader.load_rows(ask)
    assert rows.found.tolist() == [True, False, True, True, True]
    got = [i for i, f in zip(ask, rows.found, strict=True) if f]
    for g, det_id in enumerate(got):
        f, n = feats[det_id], len(feats[det_id].pixels)
        assert np.array_equal(rows.instances[g], f.instance) and np.array_equal(rows.parts[g], f.parts)
        assert np.array_equal(rows.visibility[g], f.part_visibility)
        assert rows.pixel_mask[g].sum() == n and np.array_equal(rows.pixels[g, :n], f.pixels)
        assert np.array_equal(rows.pixel_coords[g, :n], f.pixel_coords) and not rows.pixels[g, n:].any()
    parts_only = reader.load_rows(ask, pixels=False)
    assert parts_only.pixels is None and np.array_equal(parts_only.parts, rows.parts)


def test_saving_again_replaces_and_other_sizes_are_refused_with_the_reason(tmp_path):
    store = FeatureStore(tmp_path / "f", tail_rows=8)
    store.save_many([(f"c:{i}", crop(i)) for i in range(10)])
    store.save_many([("c:3", crop(300)), ("c:9", crop(900))])
    assert same(store.load("c", "c:3"), crop(300)) and same(store.load("c", "c:4"), crop(4))
    assert sum(1 for _ in store.store.live_keys()) == 10
    refused = store.save_many([("c:20", crop(20, d=64)), ("c:21", crop(21))])
    assert list(refused) == ["c:20"] and "instance of shape (64,)" in refused["c:20"]
    assert same(store.load("c", "c:21"), crop(21)) and store.load("c", "c:20") is None
    with pytest.raises(ValueError, match="pixels of shape \\(4,\\)"):
        store.save("c", "c:22", crop(22, dp=4))
    assert store.save("c", "c:23", CropFeatures(instance=np.ones(32, np.float32))) is None  # no parts: none


def test_deleted_features_leave_the_disk(tmp_path):
    store = FeatureStore(tmp_path / "f", tail_rows=16)
    store.save_many([(f"c:{i}", crop(i, cells=20)) for i in range(40)])
    pattern = crop(5, cells=20).pixels.tobytes()

    def on_disk() -> bool:
        return any(pattern in p.read_bytes() for p in (tmp_path / "f").rglob("*") if p.is_file())

    assert on_disk()
    assert store.delete(["c:5", "c:nothing"]) == 1 and store.load("c", "c:5") is None
    assert store.compact() >= 1 and not on_disk()
    assert all(same(store.load("c", f"c:{i}"), crop(i, cells=20)) for i in range(40) if i != 5)


def test_a_full_disk_raises_and_loses_nothing_acknowledged(small_disk):
    store = FeatureStore(small_disk.path / "f")
    acked: list[str] = []
    small_disk.fill(keep_free=96 * 1024)
    with pytest.raises(OSError) as err:
        for start in range(0, 10**5, 20):
            batch = [(f"c:{i}", crop(i, cells=30)) for i in range(start, start + 20)]
            store.save_many(batch)
            acked += [det_id for det_id, _ in batch]
    assert err.value.errno == errno.ENOSPC and acked
    small_disk.free()
    reopened = FeatureStore(small_disk.path / "f")
    assert sum(1 for _ in reopened.store.live_keys()) == len(acked)
    assert all(same(reopened.load("c", d), crop(int(d[2:]), cells=30)) for d in acked)
    assert store.save_many([("c:late", crop(1))]) == {} and same(reopened.load("c", "c:late"), crop(1))


N_RECORDS = 400


def feature_record(i: int) -> bytes:
    f = crop(i, cells=30)
    det = Detection(f"c:{i}:t1", "c", 1.7e9 + i, i, 1, (0.0, 0.0, 10.0, 20.0), 0.9)
    rec = FeatureRecord(
        det, "m", f.instance / np.linalg.norm(f.instance), b"\xff\xd8\xff" + bytes(2000), f.parts,
        f.part_visibility, f.pixels, f.pixel_coords,
    )  # fmt: skip
    return encode_feature(rec)


def test_the_matcher_reports_a_full_disk_and_nothing_acknowledged_is_lost(small_disk, tmp_path):
    """The features go to a disk that fills up: the matcher stops with a one-line StorageUnavailable, what it
    had committed is all there, and after room is made the records come again and are indexed once."""
    bus, metrics = InProcessBus(), PipelineMetrics()
    producer = bus.producer()
    for i in range(N_RECORDS):
        producer.send("features", feature_record(i))
    index = EmbeddedIndex(tmp_path / "index", dim=32, model="m")

    def matcher() -> MatcherWorker:
        features = FeatureStore(small_disk.path / "f")
        return MatcherWorker(index, ThumbnailStore(tmp_path / "t"), features, producer, "dlq", metrics, "m")

    done = threading.Event()
    done.set()
    small_disk.fill(keep_free=160 * 1024)  # about a third of the records' features
    with pytest.raises(StorageUnavailable, match="cannot write .*No space left.*Nothing of this batch"):
        consume_loop(bus.consumer(["features"], "matcher"), matcher().handle, threading.Event(), done, 20)
    committed = N_RECORDS - bus.lag("features", "matcher")
    assert 0 < committed < N_RECORDS
    store = FeatureStore(small_disk.path / "f")
    indexed = set(index.all_ids(10**6))
    assert len(indexed) >= committed  # a batch written to the index just before the failing one may be there
    assert all(store.load("c", f"c:{i}:t1") is not None for i in range(committed))
    small_disk.free()
    consume_loop(bus.consumer(["features"], "matcher"), matcher().handle, threading.Event(), done, 20)
    assert index.count() == N_RECORDS and bus.lag("features", "matcher") == 0
    store = FeatureStore(small_disk.path / "f")
    assert all(same(store.load("c", f"c:{i}:t1"), crop(i, cells=30), False) for i in range(0, N_RECORDS, 7))
    assert not bus.records("dlq")
