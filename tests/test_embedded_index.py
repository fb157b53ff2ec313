"""The embedded index: exact under camera and time filters, idempotent, consistent for a reader while another
process writes, refuses another model or size with the reason, survives a torn write and a full disk, and
erasure takes the data off the disk."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from matcher.embedded_index import EmbeddedIndex
from matcher.feature_store import FeatureStore
from matcher.index import IndexRow
from pgr.errors import IndexMismatch
from pgr.messages import Detection

DIM = 16


def make_rows(n: int, start: int = 0, cameras: int = 3, seed: int = 0, model: str = "m") -> list[IndexRow]:
    rng = np.random.default_rng([seed, start])
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    out = []
    for j in range(n):
        i = start + j
        cam = f"c{i % cameras}"
        det = Detection(f"{cam}:{i}:t1", cam, 1.7e9 + 10.0 * i, i, i % 5, (0.0, 0.0, 10.0, 20.0), 0.9)
        out.append(IndexRow(det, f"/t/{cam}/{i}.jpg", model, vecs[j]))
    return out


def exact(rows: list[IndexRow], q: np.ndarray, k: int, camera=None, since=None, until=None) -> list[str]:
    cams = [camera] if isinstance(camera, str) else camera
    keep = [
        r
        for r in rows
        if (cams is None or r.detection.camera_id in cams)
        and (since is None or r.detection.timestamp >= since)
        and (until is None or r.detection.timestamp <= until)
    ]
    if not keep:
        return []
    v = np.stack([r.instance / np.linalg.norm(r.instance) for r in keep])
    order = np.argsort(-(v @ (q / np.linalg.norm(q))), kind="stable")[:k]
    return [keep[i].detection.detection_id for i in order]


def test_search_is_exact_under_camera_and_time_filters(tmp_path):
    index = EmbeddedIndex(tmp_path / "idx", dim=DIM, model="m", tail_rows=100)
    rows = make_rows(430)
    for start in range(0, len(rows), 37):  # several sealed (sorted) segments and an open tail
        assert index.upsert(rows[start : start + 37]) == {}
    gone = [r.detection.detection_id for r in rows[::9]]
    assert index.delete(gone) == len(gone)
    live = [r for r in rows if r.detection.detection_id not in set(gone)]
    segments = index.store.snapshot().segments
    assert sum(s.sorted for s in segments) >= 3 and segments[-1].open
    rng = np.random.default_rng(1)
    t0 = 1.7e9
    for camera, since, until in [
        (None, None, None),
        ("c1", None, None),
        (["c0", "c2"], t0 + 500, t0 + 2500),
        ("c2", t0 + 3000, None),
        (None, None, t0 + 800),
        ("nowhere", None, None),
    ]:
        q = rng.standard_normal(DIM).astype(np.float32)
        found = index.search_ids(q, 25, camera, since, until)
        assert found.ids == exact(live, q, 25, camera, since, until)
        assert np.all(np.diff(found.scores) <= 0) and found.models == ["m"] * len(found.ids)
        hits = index.search(q, 5, camera, since, until)
        assert [h.detection_id for h in hits] == found.ids[:5]
        assert np.allclose([h.score for h in hits], found.scores[:5])
    with pytest.raises(ValueError, match="bad camera id"):
        index.search_ids(rows[0].instance, 5, camera="a b")
    with pytest.raises(ValueError, match="finite"):
        index.search_ids(rows[0].instance, 5, since=float("nan"))
    index.close()


def test_metadata_counts_and_retention_queries(tmp_path):
    index = EmbeddedIndex(tmp_path / "idx", dim=DIM, model="m", tail_rows=50)
    rows = make_rows(120)
    index.upsert(rows)
    got = index.get(["c1:4:t1", "nope", "c0:3:t1"])
    assert [g.detection_id for g in got] == ["c1:4:t1", "c0:3:t1"]
    assert got[0].camera_id == "c1" and got[0].timestamp == 1.7e9 + 40 and got[0].frame_index == 4
    assert got[0].track_id == 4 and got[0].thumbnail == "/t/c1/4.jpg" and got[0].model == "m"
    assert got[0].box == (0.0, 0.0, 10.0, 20.0) and got[0].indexed_at > 0
    assert index.count() == 120
    assert sorted(index.all_ids(1000)) == sorted(r.detection.detection_id for r in rows)
    assert index.count_by_camera(["c0", "c1", "c2", "x"]) == {"c0": 40, "c1": 40, "c2": 40, "x": 0}
    old = index.older_than(1.7e9 + 100)
    assert sorted(d.frame_index for d in old) == list(range(10))
    early = 1.7e9 + 100
    assert sorted(d.frame_index for d in index.older_than(early, cameras=["c1"])) == [1, 4, 7]
    assert sorted(d.frame_index for d in index.older_than(early, exclude=["c1"])) == [0, 2, 3, 5, 6, 8, 9]
    assert len(index.older_than(1.7e9 + 100, limit=4)) == 4
    track = index.of_track("c1", 2)  # frames i with i % 3 == 1 and i % 5 == 2
    assert sorted(d.frame_index for d in track) == [7, 22, 37, 52, 67, 82, 97, 112]
    assert [d.detection_id for d in index.of_track("c1", 2, id_prefix="c1:2")] == ["c1:22:t1"]
    assert index.of_track("nowhere", 2) == [] and len(index.of_track("c1", 2, limit=3)) == 3
    v = index.vector("c2:5:t1")
    assert np.allclose(v, rows[5].instance / np.linalg.norm(rows[5].instance), atol=1e-6)
    index.close()


def test_writing_an_id_again_replaces_its_row(tmp_path):
    index = EmbeddedIndex(tmp_path / "idx", dim=DIM, model="m", tail_rows=40)
    rows = make_rows(60)
    index.upsert(rows)
    again = make_rows(60, seed=7)  # the same ids, other vectors: a redelivery after a model change
    index.upsert(again[:45])
    assert index.count() == 60
    reader = EmbeddedIndex(tmp_path / "idx")
    assert reader.count() == 60 and sorted(reader.all_ids()) == sorted(r.detection.detection_id for r in rows)
    for r in again[:45] + rows[45:]:
        assert np.allclose(reader.vector(r.detection.detection_id), r.instance / np.linalg.norm(r.instance))
    index.close()
    reader.close()


def test_another_model_or_vector_size_is_refused_with_the_reason(tmp_path):
    EmbeddedIndex(tmp_path / "idx", dim=DIM, model="pgr-openvino").close()
    with pytest.raises(IndexMismatch, match="holds 16-d vectors .*pgr-openvino.*makes 512-d"):
        EmbeddedIndex(tmp_path / "idx", dim=512, model="pgr-openvino")
    with pytest.raises(IndexMismatch, match="holds features of model pgr-openvino, the configured model is"):
        EmbeddedIndex(tmp_path / "idx", dim=DIM, model="pgr")
    reader = EmbeddedIndex(tmp_path / "idx")  # a reader that names nothing takes what is there
    assert (reader.dim, reader.model) == (DIM, "pgr-openvino")
    writer = EmbeddedIndex(tmp_path / "idx", dim=DIM, model="pgr-openvino")
    refused = writer.upsert(make_rows(2, model="pgr") + make_rows(1, start=5, model="pgr-openvino"))
    assert sorted(refused) == ["c0:0:t1", "c1:1:t1"] and "'pgr'" in refused["c0:0:t1"]
    short = IndexRow(make_rows(1, start=9)[0].detection, "t", "pgr-openvino", np.ones(8, np.float32))
    assert "(16,)" in writer.upsert([short])["c0:9:t1"]
    assert writer.all_ids() == ["c2:5:t1"]
    with pytest.raises(IndexMismatch, match="'features' store, not a 'detection-index'"):
        features = FeatureStore(tmp_path / "f2")
        features.store.create([], {})
        EmbeddedIndex(tmp_path / "f2")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "MANIFEST.json").write_text("{not json")
    with pytest.raises(Exception, match="not a pgr-segments/1 manifest"):
        EmbeddedIndex(tmp_path / "bad")


WRITER = textwrap.dedent(
    """
    import sys
    from tests.test_embedded_index import make_rows
    from matcher.embedded_index import EmbeddedIndex
    path, batches, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    index = EmbeddedIndex(path, dim=16, model="m", tail_rows=5 * size)
    for b in range(batches):
        rows = make_rows(size, start=b * size, cameras=1)
        index.upsert(rows)
        if b % 7 == 6:  # a whole earlier batch deleted in one commit
            index.delete([r.detection.detection_id for r in make_rows(size, start=(b - 3) * size, cameras=1)])
        if b % 11 == 10:
            index.compact()
    """
)


def test_a_reader_sees_every_commit_whole_while_another_process_writes(tmp_path):
    """Batches of 20 rows are written, deleted, sealed and compacted by another process; every answer the
    reader gets holds each batch whole or not at all."""
    from pgr.paths import REPO

    size, batches = 20, 60
    path = tmp_path / "idx"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(batches), str(size)], cwd=REPO)
    reader = EmbeddedIndex(path)
    q = np.ones(DIM, np.float32)
    seen_rows, answers = set(), 0
    try:
        deadline = time.monotonic() + 120
        while writer.poll() is None and time.monotonic() < deadline:
            if reader.dim is None:
                reader = EmbeddedIndex(path)
                continue
            for ids in (reader.all_ids(10**6), reader.search_ids(q, 10**6).ids):
                per_batch: dict[int, int] = {}
                for det_id in ids:
                    b = int(det_id.split(":")[1]) // size
                    per_batch[b] = per_batch.get(b, 0) + 1
                assert set(per_batch.values()) <= {size}, per_batch
                seen_rows.add(len(ids))
                answers += 1
            assert reader.count() % size == 0
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
    final = EmbeddedIndex(path)
    deleted = {b - 3 for b in range(batches) if b % 7 == 6}
    assert final.count() == size * (batches - len(deleted))
    assert answers > 10 and len(seen_rows) > 3  # the reader did see the index grow


def test_a_torn_write_is_never_seen_and_the_next_writer_cuts_it(tmp_path):
    index = EmbeddedIndex(tmp_path / "idx", dim=DIM, model="m", tail_rows=1000)
    rows = make_rows(50)
    index.upsert(rows[:30])
    tail = index.store.snapshot().segments[-1].path
    for f in tail.iterdir():  # what a crash in the middle of an append leaves: bytes past the commit
        with f.open("ab") as fh:
            fh.write(b"\x7f" * 333)
    reader = EmbeddedIndex(tmp_path / "idx")
    assert reader.count() == 30
    assert sorted(reader.all_ids()) == sorted(r.detection.detection_id for r in rows[:30])
    index.upsert(rows[30:])
    reopened = EmbeddedIndex(tmp_path / "idx")
    assert reopened.count() == 50
    for r in rows:
        assert np.allclose(reopened.vector(r.detection.detection_id), r.instance / np.linalg.norm(r.instance))
    assert [h.thumbnail for h in reopened.get([r.detection.detection_id for r in rows])] == [
        r.thumbnail for r in rows
    ]


def test_erased_rows_leave_the_disk(tmp_path):
    index = EmbeddedIndex(tmp_path / "idx", dim=DIM, model="m", tail_rows=40)
    rows = make_rows(100)
    index.upsert(rows)
    victim = rows[17]
    pattern = (victim.instance / np.linalg.norm(victim.instance)).astype(np.float32).tobytes()

    def on_disk() -> bool:
        return any(pattern in f.read_bytes() for f in (tmp_path / "idx").rglob("*") if f.is_file())

    assert on_disk()
    assert index.delete([victim.detection.detection_id, "not-there"]) == 1
    assert index.get([victim.detection.detection_id]) == [] and index.count() == 99
    assert index.compact() >= 1
    assert not on_disk()
    assert index.count() == 99 and EmbeddedIndex(tmp_path / "idx").count() == 99


def test_a_full_disk_is_reported_and_loses_nothing_acknowledged(small_disk, monkeypatch):
    """On a tiny file system of its own (or, where mounting is refused, with fsync failing with ENOSPC), the
    write that does not fit raises ENOSPC and leaves nothing; every acknowledged row reads back, and
    writing goes on once there is room again."""
    path = small_disk.path / "idx"
    index = EmbeddedIndex(path, dim=DIM, model="m", tail_rows=10**6)
    acked = []
    small_disk.fill(keep_free=64 * 1024)
    with pytest.raises(OSError) as err:
        for start in range(0, 10**5, 50):
            batch = make_rows(50, start=start)
            index.upsert(batch)
            acked += batch
    assert err.value.errno == errno.ENOSPC
    assert len(acked) >= 50  # some batches fitted before
    small_disk.free()
    for idx in (index, EmbeddedIndex(path)):
        assert idx.count() == len(acked)
        for r in acked[:: max(1, len(acked) // 20)]:
            assert np.allclose(idx.vector(r.detection.detection_id), r.instance / np.linalg.norm(r.instance))
    more = make_rows(50, start=10**6)
    assert index.upsert(more) == {} and EmbeddedIndex(path).count() == len(acked) + 50
    json.loads((path / "MANIFEST.json").read_text())  # the commit record itself was never torn
