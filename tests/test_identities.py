"""Tracklets and global identities in the matcher, on real crops and features: the PETS 2009 video through
the real detector, tracker and default re-ID model (module fixture), then the matcher stage over the bus
and over Kafka as a process that is killed mid-replay and restarted."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterable
from contextlib import closing
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer
from test_kafka_pipeline import Service

from matcher.identities import IdentityBook, IdentityParams
from matcher.identity_quality import identity_quality
from matcher.identity_service import IdentityService
from matcher.identity_store import IdentityStore, list_identities, timeline
from matcher.tracklets import Tracklet, TrackletBook, crop_quality
from pgr.app.cli import main as pgr_main
from pgr.app.local_stack import first_offset
from pgr.app.pipeline import build_extractor, run_ingest_stage, run_matcher_stage, run_reid_stage
from pgr.messages import (
    Detection,
    FeatureRecord,
    IdentityEvent,
    MalformedRecord,
    decode_feature,
    decode_features_topic,
    decode_identity,
    encode_feature,
    encode_identity,
)
from pgr.metrics import PipelineMetrics
from pgr.settings import IdentitySettings, load_settings
from pgr.transport import InProcessBus
from reid.retrieval import RetrievalParams


@pytest.fixture(scope="module")
def pets(tmp_path_factory, assets_dir, pets_video):
    """Settings and the feature records of 70 s of PETS 2009 (real detector, tracker and re-ID model)."""
    import yaml

    tmp = tmp_path_factory.mktemp("identities")
    cfg = {
        "cameras": [
            {"id": "pets", "source": str(pets_video), "fps": 2, "max_frames": 500, "start_time": 1231322400.0}
        ],
        "ingest": {"detector_weights": str(assets_dir / "weights" / "yolo11n_int8_openvino_model")},
        "reid": {"device": "cpu"},
        "matcher": {
            "milvus_uri": str(tmp / "i.db"),
            "thumbnails_dir": str(tmp / "thumbs"),
            "identities": {"min_crops": 3, "end_gap_s": 3.0, "idle_end_s": 6.0},
        },
        "metrics": {"port": 0},
    }
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    settings = load_settings(tmp / "c.yaml")
    extractor = build_extractor(settings.reid)
    bus, stop, done = InProcessBus(capacity=100_000), threading.Event(), threading.Event()
    metrics = PipelineMetrics()
    run_ingest_stage(settings, bus, metrics, stop)
    done.set()
    run_reid_stage(settings, bus, metrics, stop, done, extractor)
    records = [decode_feature(m.value) for m in bus.records(settings.topics.features)]
    assert len(records) >= 100, len(records)
    return settings, records, extractor, tmp


def _service(settings, store: IdentityStore, **changes) -> IdentityService:
    cfg = settings.matcher.identities.model_copy(update=changes)
    retrieval = RetrievalParams.from_settings(settings.matcher)
    return IdentityService(cfg, retrieval, store, InProcessBus(10**6).producer(), "ids", PipelineMetrics())


def _partition(store: IdentityStore) -> set[frozenset[str]]:
    rows = store.db.execute("SELECT identity_id, tracklet_id FROM tracklets").fetchall()
    groups: dict[str, set[str]] = {}
    for ident, tid in rows:
        assert ident is not None, f"tracklet {tid} has no identity"
        groups.setdefault(ident, set()).add(tid)
    return {frozenset(g) for g in groups.values()}


def _feed(service: IdentityService, records: list[FeatureRecord], batch: int = 16) -> None:
    for i in range(0, len(records), batch):
        service.add([(r, "") for r in records[i : i + batch]])


def test_matcher_stage_forms_identities_and_answers_queries(pets, tmp_path, capsys):
    settings, records, extractor, tmp = pets
    bus, done = InProcessBus(capacity=100_000), threading.Event()
    producer = bus.producer()
    for r in records:
        producer.send(settings.topics.features, encode_feature(r))
    done.set()
    run_matcher_stage(settings, bus, PipelineMetrics(), threading.Event(), done, extractor)

    events = [decode_identity(m.value) for m in bus.records(settings.topics.identities)]
    store = IdentityStore(settings.matcher.identity_store_path)
    tracks = {(r.detection.camera_id, r.detection.track_id) for r in records if r.detection.track_id >= 0}
    partition = _partition(store)
    n_tracklets = sum(len(g) for g in partition)
    assert n_tracklets >= len(tracks)  # every local track became (at least) one tracklet
    assert 1 < len(partition) < n_tracklets + 1
    # the events tell the same story as the store: every identity was created by one event, every
    # tracklet ended with exactly one decision at its end
    created = {e.identity_id for e in events if e.kind == "created"}
    owners = {i for (i,) in store.db.execute("SELECT identity_id FROM tracklets")}
    assert owners <= created
    ended = [e for e in events if e.ended]  # one decision at the end (a join and the merges it bridges)
    assert len({e.tracklet_id for e in ended}) == n_tracklets
    for tid in {e.tracklet_id for e in ended}:
        seqs = [e.seq for e in ended if e.tracklet_id == tid]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (tid, seqs)
        assert all(e.kind == "merged" for e in ended if e.tracklet_id == tid and e.seq != seqs[0])
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert store.events() == events
    # one person on one camera is never in two places at once
    span = "SELECT first_seen, last_seen FROM tracklets WHERE tracklet_id = ?"
    for group in partition:
        spans = sorted(store.db.execute(span, (t,)).fetchone() for t in group)
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))

    summary = list_identities(store)
    assert len(summary) == len(partition)
    assert list_identities(store, camera="elsewhere") == []
    first = summary[0]
    line = timeline(store, first.identity_id)
    assert [e.first_seen for e in line] == sorted(e.first_seen for e in line)
    assert all(Path(e.thumbnail).is_file() for e in line)
    assert timeline(store, "id:nobody") == []
    store.close()

    config = tmp / "c.yaml"
    assert pgr_main(["identities", "--config", str(config), "--camera", "pets"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{len(partition)} identities")
    assert pgr_main(["identity", first.identity_id, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{first.identity_id}: {len(line)} tracklets on 1 cameras" in out
    assert line[0].thumbnail in out
    assert pgr_main(["identity", "id:nobody", "--config", str(config)]) == 1


def test_redelivered_records_found_no_second_identity(pets, tmp_path):
    settings, records, _, _ = pets
    store = IdentityStore(tmp_path / "ids.sqlite")
    service = _service(settings, store, idle_end_s=1e9)
    _feed(service, records)
    _feed(service, records)  # the whole stream again, as after a consumer-group rebalance
    assert service.tracklets.counts["duplicate"] == len(records)
    service.finish()
    once = _partition(store)
    store.close()

    reference = IdentityStore(tmp_path / "ref.sqlite")
    ref = _service(settings, reference, idle_end_s=1e9)
    _feed(ref, records)
    ref.finish()
    assert _partition(reference) == once
    replayed = IdentityStore(tmp_path / "ids.sqlite")
    assert [e.kind for e in reference.events()] == [e.kind for e in replayed.events()]
    replayed.close()
    reference.close()


def test_events_go_out_before_the_writes_and_a_failed_write_sends_the_same_again(pets, tmp_path, small_disk):
    """The matcher decides a batch's identities before it writes the batch's features and index rows, so an
    event does not wait for those writes. When a write then fails (a full disk), nothing of the batch is
    saved: it comes again after the restart, its events are sent again with the same ids and seq, and the
    identities are those of a run that never failed."""
    from matcher.embedded_index import EmbeddedIndex
    from matcher.feature_store import FeatureStore
    from matcher.service import MatcherWorker
    from matcher.thumbnails import ThumbnailStore
    from pgr.errors import StorageUnavailable

    settings, records, _, _ = pets
    batch = 8
    reference = IdentityStore(tmp_path / "reference.sqlite")
    ref = _service(settings, reference, idle_end_s=1e9)
    decided = [ref.add([(r, "") for r in records[i : i + batch]]) for i in range(0, len(records), batch)]
    ref.finish()
    want = _partition(reference)
    want_events = _event_keys(reference.events())
    reference.close()
    failing = next(k for k, events in enumerate(decided) if k > 0 and events)  # a batch that decides

    bus = InProcessBus(10**6)
    producer = bus.producer()
    for r in records:
        producer.send("features", encode_feature(r))
    messages = bus.records("features")
    cfg = settings.matcher.identities.model_copy(update={"idle_end_s": 1e9})
    retrieval = RetrievalParams.from_settings(settings.matcher)
    index = EmbeddedIndex(tmp_path / "index", dim=records[0].instance.shape[0], model=records[0].model)

    def matcher() -> tuple[MatcherWorker, IdentityStore]:
        store = IdentityStore(tmp_path / "ids.sqlite")
        ids = IdentityService(cfg, retrieval, store, producer, "ids", PipelineMetrics())
        features = FeatureStore(small_disk.path / "features")
        thumbs = ThumbnailStore(tmp_path / "thumbs")
        worker = MatcherWorker(
            index, thumbs, features, producer, "dlq", PipelineMetrics(), records[0].model, identities=ids
        )
        return worker, store

    worker, store = matcher()
    for k in range(failing):
        worker.handle(messages[k * batch : (k + 1) * batch])
    saved = len(store.events())
    small_disk.fill(keep_free=0)
    with pytest.raises(StorageUnavailable, match="No space left"):
        worker.handle(messages[failing * batch : (failing + 1) * batch])
    sent = _event_keys(decode_identity(m.value) for m in bus.records("ids"))
    assert len(store.events()) == saved  # the failing batch saved nothing
    assert sent[saved:] == want_events[saved : len(sent)] and len(sent) > saved  # but its events went out
    store.close()

    small_disk.free()
    worker, store = matcher()  # the restart: the uncommitted batch comes again, then the rest
    for k in range(failing, -(-len(records) // batch)):
        worker.handle(messages[k * batch : (k + 1) * batch])
    worker.finish()
    again = _event_keys(decode_identity(m.value) for m in bus.records("ids"))
    assert again[len(sent) : 2 * len(sent) - saved] == sent[saved:]  # the same events, sent again
    assert _event_keys(store.events()) == want_events
    assert _partition(store) == want and not bus.records("dlq")
    store.close()


def _event_keys(events: Iterable[IdentityEvent]) -> list[tuple[str, str, str, int]]:
    """What identifies each event (kind, identity, tracklet, seq), in order."""
    return [(e.kind, e.identity_id, e.tracklet_id, e.seq) for e in events]


def _committed_events(path: Path) -> int:
    """Identity events committed to the store at `path` (read-only, beside the matcher that writes it)."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute("SELECT count(*) FROM events").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_matcher_killed_mid_replay_ends_with_the_same_identities(
    pets, kafka_bootstrap, write_config, tmp_path, monkeypatch
):
    settings, records, _, _ = pets
    # the reference: one uninterrupted pass of the matcher's own code
    reference = IdentityStore(tmp_path / "reference.sqlite")
    ref = _service(settings, reference, idle_end_s=1e9)
    _feed(ref, records)
    ref.finish()
    want = _partition(reference)
    want_events = set(_event_keys(reference.events()))
    reference.close()

    run = time.time_ns()
    config = write_config(
        transport={
            "kind": "kafka",
            "bootstrap": kafka_bootstrap,
            "partitions": 1,
            "group_prefix": "${PGR_GROUP_PREFIX}",
            "instance_id": "${PGR_INSTANCE_ID:-}",
            # deleting what the matcher has committed loses nothing its successor still has to read
            "delete_consumed": ["features"],
            "delete_consumed_every_s": 0.2,
        },
        reid={"device": "cpu"},
        topics={n: f"ids{run}.{n}" for n in ("identities", "features")},
        metrics={"port": "${PGR_METRICS_PORT}"},
        matcher={
            "milvus_uri": str(tmp_path / "index.db"),
            "thumbnails_dir": str(tmp_path / "thumbs"),
            "batch_size": 8,
            "identities": {"min_crops": 3, "end_gap_s": 3.0, "idle_end_s": 6.0},
        },
    )
    monkeypatch.setenv("PGR_GROUP_PREFIX", "ids")
    monkeypatch.setenv("PGR_METRICS_PORT", "0")
    topics = load_settings(config).topics
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for r in records:
        producer.send(topics.features, encode_feature(r), key=b"pets")
    producer.flush()

    killed = Service("matcher", config, tmp_path, "ids")
    killed.wait_metric("pgr_identity_events_total", 3, (("kind", "created"),))
    # the metric counts an event as it is decided, a moment before the store commits it: kill once some
    # decision is committed, so the kill lands mid-replay and not before the first commit
    deadline = time.monotonic() + 60
    while _committed_events(tmp_path / "identities.sqlite") == 0:
        assert time.monotonic() < deadline, killed.log.read_text()[-3000:]
        time.sleep(0.05)
    killed.stop(signal.SIGKILL)
    store = IdentityStore(tmp_path / "identities.sqlite")
    decided_before_kill = len(store.events())
    store.close()
    successor = Service("matcher", config, tmp_path, "ids")
    deadline = time.monotonic() + 240
    store = IdentityStore(tmp_path / "identities.sqlite")
    n_tracklets = sum(len(g) for g in want)
    while sum(1 for e in store.events() if e.ended) < n_tracklets:
        assert time.monotonic() < deadline, successor.log.read_text()[-3000:]
        assert successor.proc.poll() is None, successor.log.read_text()[-3000:]
        time.sleep(1)
    assert successor.stop() == 0
    assert first_offset(kafka_bootstrap, topics.features) > 0, "the matcher deleted none of what it read"
    got = _partition(store)
    got_events = set(_event_keys(store.events()))
    counts = store.counts()
    store.close()
    assert 0 < decided_before_kill < len(want_events), "the kill landed mid-replay"
    assert len(got) == len(want) and got == want
    assert got_events == want_events
    assert counts.get("duplicate", 0) <= settings.matcher.batch_size * 2  # at most the uncommitted batches


def _det(det_id: str, camera: str, t: float, track: int, frame: int) -> Detection:
    return Detection(det_id, camera, t, frame, track, (10.0, 10.0, 60.0, 180.0), 0.9)


def test_bad_input_is_counted_not_crashed_on(pets, tmp_path):
    settings, records, _, _ = pets
    real = records[0]

    def rec(det_id: str, camera: str, t: float, track: int, frame: int) -> FeatureRecord:
        return dataclasses.replace(real, detection=_det(det_id, camera, t, track, frame))

    book = TrackletBook(keep_best=2, end_gap_s=3.0, idle_end_s=1e9, cameras=["pets"])
    assert book.add(rec("x:1:t1", "x", 100.0, 1, 1), "", 0.0) is None  # unknown camera
    a = book.add(rec("pets:10:t1", "pets", 110.0, 1, 10), "", 0.0)
    assert book.add(rec("pets:9:t1", "pets", 109.0, 1, 9), "", 0.0) is a  # out of order, kept
    assert (a.first_seen, a.last_seen, a.n_crops) == (109.0, 110.0, 2)
    book.add(rec("pets:30:t2", "pets", 130.0, 2, 30), "", 0.0)
    assert [t.tracklet_id for t in book.due(0.0)] == ["pets:t1"]  # the stream ran 20 s past it
    assert book.add(rec("pets:11:t1", "pets", 110.5, 1, 11), "", 0.0) is None  # late: already decided
    again = book.add(rec("pets:500:t1", "pets", 150.0, 1, 500), "", 0.0)  # the tracker restarted
    assert again.tracklet_id == "pets:t1+2" and again is not a
    back = book.add(rec("pets:3:t2", "pets", 20.0, 2, 3), "", 0.0)  # the camera's clock went back
    assert back.tracklet_id == "pets:t2+2"
    assert book.add(rec("pets:10:t1", "pets", 110.0, 1, 10), "", 0.0) is a  # redelivered after all that
    assert dict(book.counts) == {
        "unknown_camera": 1,
        "out_of_order": 1,
        "late": 1,
        "track_restart": 2,
        "duplicate": 1,
    }
    assert len(a.best) == 2 and a.feature.shape == real.instance.shape

    # the service counts the same and publishes them as metrics; a record never stops it
    store = IdentityStore(tmp_path / "bad.sqlite")
    service = _service(settings, store, cameras=["pets"], idle_end_s=1e9)
    service.add([(rec("x:1:t1", "x", 100.0, 1, 1), ""), (rec("pets:1:t7", "pets", 100.0, 7, 1), "")])
    assert service.tracklets.counts["unknown_camera"] == 1
    assert service.metrics.tracklet_input_refused.labels("unknown_camera")._value.get() == 1
    store.close()


def test_kept_features_blob_round_trip_and_earlier_npz_stores(pets):
    """The identity store's blob of a tracklet's kept crops gives back every array exactly (dtype, shape, an
    empty pixel set too), and a blob of an earlier store (an .npz) still reads."""
    import io

    from matcher.tracklets import KeptCrop, features_from_bytes, features_to_bytes

    _, records, _, _ = pets
    feats = [r.crop_features() for r in records[:3]]
    empty = dataclasses.replace(feats[2], pixels=feats[2].pixels[:0], pixel_coords=feats[2].pixel_coords[:0])
    kept = [KeptCrop(f"d{i}", 0.0, 1.0, "", f) for i, f in enumerate([*feats[:2], empty])]
    names = ("instance", "parts", "part_visibility", "pixels", "pixel_coords")

    def same(a, b) -> bool:
        return all(
            getattr(a, k).dtype == getattr(b, k).dtype and np.array_equal(getattr(a, k), getattr(b, k))
            for k in names
        )

    back = features_from_bytes(features_to_bytes(kept), 3)
    assert all(same(c.features, f) for c, f in zip(kept, back, strict=True))
    assert back[2].pixels.shape == (0, feats[2].pixels.shape[1])
    back[0].pixels[:] = 0  # writable copies
    npz = io.BytesIO()
    np.savez(npz, **{f"{i}_{k}": getattr(c.features, k) for i, c in enumerate(kept) for k in names})
    assert all(same(c.features, f) for c, f in zip(kept, features_from_bytes(npz.getvalue(), 3), strict=True))


def test_quality_prefers_large_sharp_whole_crops(pets):
    _, records, _, _ = pets
    jpeg = max(records, key=lambda r: r.detection.box[3] - r.detection.box[1]).jpeg
    whole = crop_quality((100.0, 100.0, 180.0, 300.0), 0.9, jpeg)
    assert crop_quality((100.0, 100.0, 140.0, 200.0), 0.9, jpeg) < whole  # smaller
    assert crop_quality((100.0, 100.0, 180.0, 300.0), 0.4, jpeg) < whole  # less certain
    assert crop_quality((0.0, 100.0, 80.0, 300.0), 0.9, jpeg) < whole  # cut by the border
    import cv2

    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    blurred = cv2.imencode(".jpg", cv2.GaussianBlur(img, (15, 15), 5))[1].tobytes()
    assert crop_quality((100.0, 100.0, 180.0, 300.0), 0.9, blurred) < whole  # blurred


def test_constraints_keep_an_identity_out_of_two_places(pets):
    _, records, _, _ = pets
    feat = records[0]

    def tracklet(tid: str, camera: str, first: float, last: float) -> Tracklet:
        t = Tracklet(tid, camera, 1, first, last, 0, feat.instance.astype(np.float64))
        t.add(feat, 0.5, "", 2)
        t.first_seen, t.last_seen = first, last
        return t

    params = IdentityParams(threshold=0.0, overlapping=(frozenset({"a", "b"}),), transitions=None)
    book = IdentityBook(params)
    e0 = book.decide(tracklet("a:t1", "a", 0.0, 10.0), ended=True, now=1.0)
    assert [e.kind for e in e0] == ["created"]
    # the same features: joins when possible, founds when a constraint forbids it
    assert book.decide(tracklet("b:t1", "b", 5.0, 12.0), True, 1.0)[0].kind == "joined"  # overlapping views
    assert book.decide(tracklet("a:t2", "a", 8.0, 20.0), True, 1.0)[0].kind == "created"  # one camera
    assert book.decide(tracklet("c:t1", "c", 9.0, 11.0), True, 1.0)[0].kind == "created"  # c overlaps no one
    assert book.decide(tracklet("c:t2", "c", 300.0, 310.0), True, 1.0)[0].kind == "joined"
    transit = IdentityBook(dataclasses.replace(params, transitions={"a>c": 30.0}))
    transit.decide(tracklet("a:t1", "a", 0.0, 10.0), True, 1.0)
    assert transit.decide(tracklet("c:t1", "c", 20.0, 30.0), True, 1.0)[0].kind == "created"  # too soon
    assert transit.decide(tracklet("c:t2", "c", 50.0, 60.0), True, 1.0)[0].kind == "joined"
    assert transit.decide(tracklet("d:t1", "d", 500.0, 510.0), True, 1.0)[0].kind == "created"  # no link


def test_a_merge_needs_the_merge_threshold_a_join_only_the_threshold():
    """A tracklet joined identity A early; at its end it matches B better and A still above the join
    threshold but below the merge threshold: it moves to B and A stays apart. Only a merge threshold at
    or below its score for A merges A and B (tracklet features decide: the tracklets have no crops)."""
    a, b = np.eye(8)[0], np.eye(8)[1]  # s_ins(A, B) = 0.5: two identities
    cos_a, cos_b = 2 * 0.79 - 1, 2 * 0.85 - 1  # s_ins = (1 + cos) / 2: A 0.79, B 0.85
    late = np.array([cos_a, cos_b, np.sqrt(1 - cos_a**2 - cos_b**2), 0, 0, 0, 0, 0])

    def tracklet(tid: str, feature: np.ndarray, first: float, n: int) -> Tracklet:
        return Tracklet(tid, tid.split(":")[0], 1, first, first + 10.0, 0, feature, n_crops=n)

    def run(merge_threshold: float) -> tuple[list[str], set[frozenset[str]]]:
        book = IdentityBook(IdentityParams(threshold=0.78, merge_threshold=merge_threshold))
        book.decide(tracklet("a:t1", a, 0.0, 1), ended=True, now=1.0)
        book.decide(tracklet("b:t1", b, 30.0, 1), ended=True, now=1.0)
        kinds = [e.kind for e in book.decide(tracklet("c:t1", a, 100.0, 1), ended=False, now=1.0)]
        end = book.decide(tracklet("c:t1", late, 100.0, 2), ended=True, now=2.0)
        groups = {frozenset(m) for m in book.members.values()}
        return kinds + [e.kind for e in end], groups

    assert run(0.80) == (["joined", "moved"], {frozenset({"a:t1"}), frozenset({"b:t1", "c:t1"})})
    assert run(0.785) == (["joined", "merged"], {frozenset({"a:t1", "b:t1", "c:t1"})})


def test_a_bridge_between_two_identities_of_one_camera_needs_them_to_match_each_other():
    """Identities A and B, both seen on camera x, do not match each other (s_ins 0.5); a tracklet on camera
    y matches both at 0.82, above the merge threshold. With `shared_camera_direct` it joins one and the two
    stay apart; without it, or when B was seen on another camera, it merges them."""
    a, b = np.eye(8)[0], np.eye(8)[1]
    cos = 2 * 0.82 - 1  # s_ins = (1 + cos) / 2 = 0.82 against each
    both = np.array([cos, cos, np.sqrt(1 - 2 * cos**2), 0, 0, 0, 0, 0])

    def tracklet(tid: str, feature: np.ndarray, first: float) -> Tracklet:
        return Tracklet(tid, tid.split(":")[0], 1, first, first + 10.0, 0, feature, n_crops=1)

    def run(direct: bool, b_camera: str) -> tuple[list[str], set[frozenset[str]]]:
        book = IdentityBook(IdentityParams(threshold=0.78, merge_threshold=0.80, shared_camera_direct=direct))
        book.decide(tracklet("x:t1", a, 0.0), ended=True, now=1.0)
        book.decide(tracklet(f"{b_camera}:t2", b, 30.0), ended=True, now=1.0)
        kinds = [e.kind for e in book.decide(tracklet("y:t1", both, 100.0), ended=True, now=2.0)]
        return kinds, {frozenset(m) for m in book.members.values()}

    assert run(True, "x") == (["joined"], {frozenset({"x:t1"}), frozenset({"x:t2", "y:t1"})})
    assert run(False, "x") == (["joined", "merged"], {frozenset({"x:t1", "x:t2", "y:t1"})})
    assert run(True, "z") == (["joined", "merged"], {frozenset({"x:t1", "z:t2", "y:t1"})})


def test_identity_event_record_round_trip_and_refusals():
    ev = IdentityEvent("moved", "id:pets:t3", "pets:t9", "pets", 10.0, 20.0, 0.91, 7, "id:pets:t1")
    assert decode_identity(encode_identity(ev)) == ev
    for bad in (
        b"{}",
        b'{"kind":"pgr.identity","version":1,"event":"created"}',
        encode_identity(ev).replace(b'"moved"', b'"vanished"'),
        encode_identity(ev).replace(b'"id:pets:t1"', b'""'),
        encode_identity(ev).replace(b'"seq":7', b'"seq":-1'),
        encode_identity(ev).replace(b'"score":0.91', b'"score":"high"'),
        encode_identity(ev).replace(b'"seq":7', b'"seq":7,"extra":1'),
    ):
        with pytest.raises(MalformedRecord):
            decode_identity(bad)


def test_identity_quality_figures():
    truth = {"a": 1, "b": 1, "c": 1, "d": 2, "e": 2}
    perfect = identity_quality(truth, {"a": "x", "b": "x", "c": "x", "d": "y", "e": "y"})
    assert (perfect.idf1, perfect.pair_precision, perfect.pair_recall) == (1.0, 1.0, 1.0)
    split = identity_quality(truth, {"a": "x", "b": "x", "c": "z", "d": "y", "e": "y"})
    assert split.idf1 == pytest.approx(4 / 5)
    assert split.pair_precision == 1.0 and split.pair_recall == pytest.approx(2 / 4)
    assert split.identities_per_true == 1.5
    merged = identity_quality(truth, {k: "x" for k in truth})
    assert merged.idf1 == pytest.approx(3 / 5) and merged.pair_precision == pytest.approx(4 / 10)


def test_identity_settings_defaults_and_store_path(write_config, tmp_path):
    matcher = {
        "milvus_uri": str(tmp_path / "i.db"),
        "thumbnails_dir": str(tmp_path / "thumbs"),
        "identities": {"store": "ids/state.sqlite"},
    }
    settings = load_settings(write_config(matcher=matcher))
    assert settings.matcher.identity_store_path == tmp_path / "ids" / "state.sqlite"
    assert settings.topics.identities == "pgr.identities"
    assert IdentitySettings().enabled


def _person(records: list[FeatureRecord]) -> list[FeatureRecord]:
    """The crops of the longest local track (one person), in time order."""
    tracks: dict[int, list[FeatureRecord]] = {}
    for r in records:
        if r.detection.track_id >= 0:
            tracks.setdefault(r.detection.track_id, []).append(r)
    longest = max(tracks.values(), key=len)
    return sorted(longest, key=lambda r: r.detection.timestamp)


def _on_camera(
    records: list[FeatureRecord], camera: str, start: float, track: int = 1
) -> list[FeatureRecord]:
    """The same real crops as a tracklet of another camera from `start` (stream time), one every 2 s."""
    t0 = records[0].detection.timestamp + start
    return [
        dataclasses.replace(
            r,
            detection=dataclasses.replace(
                r.detection,
                detection_id=f"{camera}:{i}:t{track}",
                camera_id=camera,
                track_id=track,
                frame_index=i,
                timestamp=t0 + 2.0 * i,
            ),
        )
        for i, r in enumerate(records)
    ]


def _bus_service(settings, store: IdentityStore, bus: InProcessBus, **changes) -> IdentityService:
    cfg = settings.matcher.identities.model_copy(update=changes)
    retrieval = RetrievalParams.from_settings(settings.matcher)
    return IdentityService(cfg, retrieval, store, bus.producer(), "ids", PipelineMetrics())


def _probe(settings, tmp_path: Path, x, y, z, early: int = 0) -> tuple[float, dict[str, float]]:
    """Real scores: X and Y each found an identity (id:c1:t1, id:c2:t1); Y's score against X's, and Z's
    (its first `early` crops only, when given) against both."""
    store = IdentityStore(tmp_path / f"probe{early}.sqlite")
    probe = _bus_service(settings, store, InProcessBus(10**6), threshold=1.0)
    for rs in (x, y):
        _feed(probe, rs)
        probe.finish()
    ids = probe.identities
    y_to_a = ids.scores(ids.tracklets["c2:t1"], ["id:c1:t1"])["id:c1:t1"]
    book = TrackletBook(keep_best=settings.matcher.identities.keep_best, end_gap_s=7.0)
    tz = [book.add(r, "", 0.0) for r in (z[:early] if early else z)][-1]
    probe.store.close()
    return y_to_a, ids.scores(tz, ["id:c1:t1", "id:c2:t1"])


def test_a_bridging_tracklet_merges_two_identities(pets, tmp_path):
    """One person on three cameras: the first two views do not match each other well enough, so each founds
    an identity; the third view, arriving later, matches both and merges them (one event, in the store,
    on the bus, and after a restart)."""
    settings, records, _, _ = pets
    person = _person(records)
    assert len(person) >= 20, len(person)
    x = _on_camera(person[:8], "c1", 0.0)
    y = _on_camera(person[20:], "c2", 100.0)
    z = _on_camera(person[8:20], "c3", 200.0)
    # the real scores place the threshold: Y against X's identity below it, Z against both above it
    y_to_a, z_to = _probe(settings, tmp_path, x, y, z)
    low, high = y_to_a, min(z_to.values())
    assert high - low > 0.01, f"the views do not bridge with this model: Y-X {low:.3f}, Z {z_to}"
    threshold = (low + high) / 2

    def run(path: Path, stream: list[FeatureRecord], **changes) -> tuple[IdentityStore, list[IdentityEvent]]:
        store, bus = IdentityStore(path), InProcessBus(10**6)
        changes = {"merge_threshold": None, **changes}  # bridge merges at the join threshold
        service = _bus_service(settings, store, bus, threshold=threshold, min_crops=100, **changes)
        _feed(service, stream)
        service.finish()
        return store, [decode_identity(m.value) for m in bus.records("ids")]

    store, events = run(tmp_path / "ids.sqlite", x + y + z)
    assert [(e.kind, e.tracklet_id) for e in events] == [
        ("created", "c1:t1"),
        ("created", "c2:t1"),
        ("joined", "c3:t1"),
        ("merged", "c3:t1"),
    ]
    merged = events[-1]
    assert (merged.identity_id, merged.previous_id) == ("id:c1:t1", "id:c2:t1")  # the older one stays
    # Z joins the identity it scores best against and bridges in the other, at Z's score against that one
    joined = events[2]
    assert joined.score == pytest.approx(max(z_to.values()))
    assert merged.score == pytest.approx(min(z_to.values())) and merged.ended
    assert store.events() == events
    assert _partition(store) == {frozenset({"c1:t1", "c2:t1", "c3:t1"})}
    line = timeline(store, "id:c1:t1")
    assert [e.camera_id for e in line] == ["c1", "c2", "c3"]
    assert timeline(store, "id:c2:t1") == [] and len(list_identities(store)) == 1
    store.close()
    restarted = _bus_service(settings, IdentityStore(tmp_path / "ids.sqlite"), InProcessBus(10**6))
    assert {k: set(v) for k, v in restarted.identities.members.items()} == {
        "id:c1:t1": {"c1:t1", "c2:t1", "c3:t1"}
    }
    restarted.store.close()

    # without the bridge, or with bridge merges turned off, the two identities stay apart
    apart, events = run(tmp_path / "apart.sqlite", x + y)
    assert len(_partition(apart)) == 2 and "merged" not in {e.kind for e in events}
    off, events = run(tmp_path / "off.sqlite", x + y + z, merge_threshold=1.0)
    joined = max(z_to, key=z_to.get).removeprefix("id:")
    assert _partition(off) == {frozenset({joined, "c3:t1"}), frozenset({"c1:t1", "c2:t1"} - {joined})}
    assert [e.kind for e in events] == ["created", "created", "joined"]


def test_a_tracklet_that_turns_out_to_be_someone_else_moves(pets, tmp_path):
    """A tracker switch: a tracklet begins on one person (decided early: joins their identity) and goes on
    with another; decided again at its end, it moves to the other's identity (a `moved` event)."""
    settings, records, _, _ = pets
    tracks: dict[int, list[FeatureRecord]] = {}
    for r in sorted(records, key=lambda r: r.detection.timestamp):
        tracks.setdefault(r.detection.track_id, []).append(r)
    p, *others = sorted((v for k, v in tracks.items() if k >= 0), key=len, reverse=True)
    assert len(p) >= 14, len(p)
    a, b = "id:c1:t1", "id:c2:t1"
    tried = []
    for q in (q for q in others if len(q) >= 8):  # the first other person whose views separate
        x = _on_camera(p[:10], "c1", 0.0)
        y = _on_camera(q[:4], "c2", 100.0)
        z = _on_camera(p[10:14] + q[4:], "c3", 200.0)  # the first 4 crops are p, the rest q
        y_to_a, early = _probe(settings, tmp_path / f"q{len(tried)}", x, y, z, early=4)
        _, late = _probe(settings, tmp_path / f"q{len(tried)}", x, y, z)
        low, high = max(y_to_a, early[b], late[a]), min(early[a], late[b])
        tried.append((round(low, 3), round(high, 3)))
        if high - low > 0.01:
            break
    else:
        pytest.fail(f"no other person's views separate from the first's (low, high): {tried}")
    store, bus = IdentityStore(tmp_path / "ids.sqlite"), InProcessBus(10**6)
    service = _bus_service(settings, store, bus, threshold=(low + high) / 2, min_crops=4)
    for stream in (x + y, z):
        _feed(service, stream)
        service.finish()
    events = [decode_identity(m.value) for m in bus.records("ids")]
    assert [(e.kind, e.tracklet_id, e.ended) for e in events] == [
        ("created", "c1:t1", False),
        ("confirmed", "c1:t1", True),  # ends once camera c2's stream runs past it
        ("created", "c2:t1", False),
        ("confirmed", "c2:t1", True),
        ("joined", "c3:t1", False),
        ("moved", "c3:t1", True),
    ]
    assert (events[-1].identity_id, events[-1].previous_id) == (b, a)
    assert events[-1].score == pytest.approx(late[b])
    assert store.events() == events
    assert _partition(store) == {frozenset({"c1:t1"}), frozenset({"c2:t1", "c3:t1"})}
    store.close()


def test_ended_identities_leave_memory_but_stay_in_the_store(pets, tmp_path):
    """A long-running matcher: the same real stream again and again, 200 s apart, with a 30 s window;
    identities out of every future window leave memory (bounded), stay queryable in the store, are not
    loaded again after a restart, and a crop that comes back for one of them founds nothing."""
    import gc
    import tracemalloc

    settings, records, _, _ = pets

    def copy(i: int) -> list[FeatureRecord]:
        out = []
        for r in records:
            d = r.detection
            track = d.track_id + 10_000 * i if d.track_id >= 0 else -1
            det = dataclasses.replace(
                d,
                detection_id=f"pets:{d.frame_index + 100_000 * i}:t{track}",
                track_id=track,
                frame_index=d.frame_index + 100_000 * i,
                timestamp=d.timestamp + 200.0 * i,
            )
            out.append(dataclasses.replace(r, detection=det))
        return out

    store, bus = IdentityStore(tmp_path / "ids.sqlite"), InProcessBus(10**6)
    service = _bus_service(settings, store, bus, window_s=30.0, end_gap_s=3.0, idle_end_s=1e9)
    reader = bus.consumer(["ids"], "reader")  # a consumer of the events: the bus keeps none it has read
    in_memory, traced = [], []
    tracemalloc.start()
    try:
        for i in range(8):
            _feed(service, copy(i))
            while reader.poll(max_records=10_000, timeout_s=0.0):
                reader.commit()
            in_memory.append(len(service.tracklets.tracklets))
            gc.collect()
            traced.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    service.finish()
    one = IdentityStore(tmp_path / "one.sqlite")
    reference = _service(settings, one, window_s=30.0, end_gap_s=3.0, idle_end_s=1e9)
    _feed(reference, copy(0))
    reference.finish()
    per_copy = one.db.execute("SELECT count(*) FROM tracklets").fetchone()[0]
    one.close()
    stored = store.db.execute("SELECT count(*) FROM tracklets").fetchone()[0]
    assert per_copy >= 10 and stored == 8 * per_copy  # everything decided is on disk
    assert all(ident for (ident,) in store.db.execute("SELECT identity_id FROM tracklets"))
    assert max(in_memory) <= 2.5 * per_copy, in_memory  # the current copy and what may still match it
    assert in_memory[-1] <= in_memory[2] + per_copy * 0.5, in_memory
    assert max(traced[3:]) < 1.2 * traced[2], traced  # without eviction: about 2.4 times at the end
    assert set(service.identities.tracklets) <= set(service.tracklets.tracklets)
    first = next(
        iter(i for (i,) in store.db.execute("SELECT identity_id FROM tracklets ORDER BY first_seen"))
    )
    assert first not in service.identities.members and timeline(store, first)  # evicted, still queryable
    kept = set(service.tracklets.tracklets)
    store.close()

    store = IdentityStore(tmp_path / "ids.sqlite")
    again = _service(settings, store, window_s=30.0, end_gap_s=3.0, idle_end_s=1e9)
    assert set(again.tracklets.tracklets) == kept  # the evicted are not loaded again
    before = store.db.execute("SELECT count(*) FROM tracklets").fetchone()[0]
    old = next(r for r in copy(0) if r.detection.track_id >= 0)
    again.add([(old, "")])  # a crop of an evicted tracklet comes back
    assert again.tracklets.counts["expired"] == 1
    # a track key seen before eviction, reused later, becomes a new segment (the stored one is kept)
    d = old.detection
    reused = dataclasses.replace(
        d, detection_id=f"pets:9999999:t{d.track_id}", timestamp=d.timestamp + 1800.0
    )
    t = again.tracklets.add(dataclasses.replace(old, detection=reused), "", 0.0)
    assert t is not None and t.tracklet_id.endswith("+2")
    again.finish()
    assert store.db.execute("SELECT count(*) FROM tracklets").fetchone()[0] == before + 1
    store.close()


def test_the_reid_stage_extracts_a_sample_of_each_track(pets, tmp_path, write_config):
    """reid.sample_every_s: a track's first crop, then one every S seconds of its stream; a redelivered
    crop gets its first decision again; the crops left out are counted, not published."""
    from pgr.messages import CropRecord, encode_crop
    from pgr.settings import SettingsError
    from reid.sampling import TrackSampler

    settings, records, extractor, _ = pets
    crops = [CropRecord(r.detection, r.jpeg) for r in records]
    gap = settings.matcher.identities.end_gap_s  # a track back after a gap: a new tracklet, a first crop
    sampler = TrackSampler(every_s=4.0, gap_s=gap)
    wanted = [sampler.wants(c.detection) for c in crops]
    assert [sampler.wants(c.detection) for c in crops] == wanted  # the same crops again: the same answer
    last: dict[int, float] = {}
    seen: dict[int, float] = {}
    for c, w in zip(crops, wanted, strict=True):
        d = c.detection
        if d.track_id < 0:
            assert w
        elif d.track_id not in last or d.timestamp - seen[d.track_id] > gap:
            assert w  # a track's first crop, or its first after a gap
            last[d.track_id] = d.timestamp
        else:
            assert w == (d.timestamp - last[d.track_id] >= 4.0), (d.detection_id, last[d.track_id])
            if w:
                last[d.track_id] = d.timestamp
        if d.track_id >= 0:
            seen[d.track_id] = max(seen.get(d.track_id, d.timestamp), d.timestamp)
    assert 0 < sum(not w for w in wanted) < len(crops)

    bus, done = InProcessBus(capacity=100_000), threading.Event()
    producer = bus.producer()
    for c in crops:
        producer.send(settings.topics.crops, encode_crop(c))
    done.set()
    sampled = settings.model_copy(update={"reid": settings.reid.model_copy(update={"sample_every_s": 4.0})})
    metrics = PipelineMetrics()
    run_reid_stage(sampled, bus, metrics, threading.Event(), done, extractor)
    out = [decode_feature(m.value).detection.detection_id for m in bus.records(settings.topics.features)]
    assert out == [c.detection.detection_id for c, w in zip(crops, wanted, strict=True) if w]
    assert metrics.crops_sampled_out._value.get() == len(crops) - len(out)

    # a sampling interval the matcher's end gap cannot bridge is refused
    config = write_config(
        reid={"device": "cpu", "sample_every_s": 5.0},
        matcher={
            "milvus_uri": str(tmp_path / "i.db"),
            "thumbnails_dir": str(tmp_path / "t"),
            "identities": {"end_gap_s": 5.0},
        },
    )
    with pytest.raises(SettingsError, match="sample_every_s"):
        load_settings(config)


def test_a_reid_stage_behind_sheds_crops_of_tracks_it_has_seen(pets, tmp_path, write_config):
    """reid.shed_after_s: crops that waited longer than that since their frame was read (counting the
    extraction queued ahead of them) are sampled as with shed_every_s (counted as shed, not sampled out); a
    stage that keeps up sheds nothing."""
    from pgr.messages import CropRecord, encode_crop
    from pgr.settings import SettingsError
    from reid.sampling import TrackSampler
    from reid.service import ReidWorker

    settings, records, extractor, _ = pets
    crops = [CropRecord(r.detection, r.jpeg) for r in records]
    first_read, newest_read = min(c.detection.read_at for c in crops), max(c.detection.read_at for c in crops)
    on_time = TrackSampler(0.0, shed_after_s=2.0, shed_every_s=4.0, clock=lambda: first_read)
    assert all(on_time.decide(c.detection) == "extract" for c in crops)
    gap = settings.matcher.identities.end_gap_s
    behind = TrackSampler(0.0, shed_after_s=2.0, shed_every_s=4.0, clock=lambda: newest_read + 60, gap_s=gap)
    decisions = [behind.decide(c.detection) for c in crops]
    reference = TrackSampler(every_s=4.0, gap_s=gap)
    assert decisions == ["extract" if reference.wants(c.detection) else "shed" for c in crops]
    assert "shed" in decisions
    # on time so far, but with the extraction queued ahead of them the crops would come out late
    queued = TrackSampler(0.0, shed_after_s=2.0, shed_every_s=4.0, clock=lambda: first_read, gap_s=gap)
    assert [queued.decide(c.detection, backlog_s=60.0) for c in crops] == decisions

    bus, done = InProcessBus(capacity=100_000), threading.Event()
    producer = bus.producer()
    for c in crops:
        producer.send(settings.topics.crops, encode_crop(c))
    done.set()
    # the fixture's frames were read before this test: every crop is late by more than 1 ms
    reid = settings.reid.model_copy(update={"shed_after_s": 0.001, "shed_every_s": 4.0})
    metrics = PipelineMetrics()
    run_reid_stage(
        settings.model_copy(update={"reid": reid}), bus, metrics, threading.Event(), done, extractor
    )
    topic = [decode_features_topic(m.value) for m in bus.records(settings.topics.features)]
    # every crop comes out, in order: extracted as a feature record, shed as a sighting (no features)
    assert [r.detection_id if isinstance(r, Detection) else r.detection.detection_id for r in topic] == [
        c.detection.detection_id for c in crops
    ]
    out = [r.detection.detection_id for r in topic if isinstance(r, FeatureRecord)]
    assert out == [c.detection.detection_id for c, d in zip(crops, decisions, strict=True) if d == "extract"]
    assert metrics.crops_shed._value.get() == len(crops) - len(out) > 0
    assert metrics.crops_sampled_out._value.get() == 0

    # the worker counts the batch's queued extraction: no crop waited A, but each costs (say) 1000 s, so
    # every crop after the batch's first is late; the measured cost replaces the assumed one
    bus = InProcessBus(capacity=100_000)
    for c in crops:
        bus.producer().send(settings.topics.crops, encode_crop(c))
    lag = newest_read - first_read + 1.0
    sampler = TrackSampler(0.0, shed_after_s=lag, shed_every_s=4.0, clock=lambda: newest_read, gap_s=gap)
    worker = ReidWorker(extractor, bus.producer(), "f", "dlq", PipelineMetrics(), sampler)
    worker.crop_s = 1000.0
    worker.handle(bus.records(settings.topics.crops))
    topic = [decode_features_topic(m.value) for m in bus.records("f")]
    assert [r.detection.detection_id for r in topic if isinstance(r, FeatureRecord)] == out
    assert 0 < worker.crop_s < 1000.0

    # shed crops reach the matcher as sightings: shedding may be sparser than the end gap, sampling may not
    matcher = {
        "milvus_uri": str(tmp_path / "i.db"),
        "thumbnails_dir": str(tmp_path / "t"),
        "identities": {"end_gap_s": 5.0},
    }
    config = write_config(reid={"device": "cpu", "shed_after_s": 2.0, "shed_every_s": 6.0}, matcher=matcher)
    assert load_settings(config).reid.shed_every_s == 6.0
    config = write_config(reid={"device": "cpu", "sample_every_s": 5.0}, matcher=matcher)
    with pytest.raises(SettingsError, match="sample_every_s"):
        load_settings(config)


def _first_crops(crops: list, n: int, every_s: float, gap_s: float) -> set[str]:
    """The crops hard shedding keeps, written out: of each track's tracklet (a new one after more than
    `gap_s` without the track) its first crop, then up to n - 1 more, each `every_s` after the last kept."""
    kept: set[str] = set()
    state: dict[int, tuple[float, float, int]] = {}  # track -> (last seen, last kept, kept in its tracklet)
    for c in crops:
        d = c.detection
        seen, last, count = state.get(d.track_id, (-math.inf, -math.inf, 0))
        if d.timestamp - seen > gap_s:
            last, count = -math.inf, 0
        if count < n and d.timestamp - last >= every_s:
            kept.add(d.detection_id)
            last, count = d.timestamp, count + 1
        state[d.track_id] = (max(seen, d.timestamp), last, count)
    return kept


def _hard_shedding_reid_stage(settings, extractor, crops: list, **reid: object) -> tuple:
    """The real re-ID stage over `crops` (all late: hard shedding throughout) with these reid settings;
    returns the bus, the features topic decoded, and the stage's metrics."""
    from pgr.messages import encode_crop

    bus, done = InProcessBus(capacity=100_000), threading.Event()
    for c in crops:
        bus.producer().send(settings.topics.crops, encode_crop(c))
    done.set()
    late = {"shed_after_s": 0.001, "shed_every_s": 2.0, "shed_hard_after_s": 0.002}
    metrics = PipelineMetrics()
    run_reid_stage(
        settings.model_copy(update={"reid": settings.reid.model_copy(update={**late, **reid})}),
        bus,
        metrics,
        threading.Event(),
        done,
        extractor,
    )
    return bus, [decode_features_topic(m.value) for m in bus.records(settings.topics.features)], metrics


def test_hard_shedding_extracts_first_crops_and_sightings_keep_tracklets_whole(pets, tmp_path):
    """reid.shed_hard_after_s: a crop later than that is extracted only if it is among its tracklet's first
    reid.shed_hard_crops; the shed crops reach the matcher as sightings, so each tracklet lasts as long as
    its track (without them it would end at its last extracted crop), none splits, and the tracklets are the
    ones of an on-time run."""
    from pgr.app.identity_eval import sampled
    from pgr.messages import CropRecord
    from reid.sampling import TrackSampler

    settings, records, extractor, _ = pets
    crops = [CropRecord(r.detection, r.jpeg) for r in records if r.detection.track_id >= 0]
    newest_read = max(c.detection.read_at for c in crops)
    gap = settings.matcher.identities.end_gap_s
    late = {"shed_after_s": 1.0, "shed_every_s": 2.0, "clock": lambda: newest_read + 60, "gap_s": gap}
    for n in (1, 2):
        hard = TrackSampler(0.0, shed_hard_after_s=30.0, hard_crops=n, **late)
        decisions = [hard.decide(c.detection) for c in crops]
        kept = _first_crops(crops, n, 2.0, gap)
        assert [d == "extract" for d in decisions] == [c.detection.detection_id in kept for c in crops]
    firsts = _first_crops(crops, 1, 2.0, gap)
    assert len(firsts) < len(kept)
    # between the two bounds it sheds as before (every shed_every_s), not harder
    soft = TrackSampler(0.0, shed_hard_after_s=1e6, **late)
    assert sum(soft.decide(c.detection) == "extract" for c in crops) > len(kept)
    # the offline replay's stand-in (calibration under hard shedding, its crops 6 s apart): the same crops,
    # sightings for the rest
    offline = sampled([r for r in records if r.detection.track_id >= 0], math.inf, gap, hard_crops=2)
    assert [r.detection_id if isinstance(r, Detection) else r.detection.detection_id for r in offline] == [
        c.detection.detection_id for c in crops
    ]
    got = {r.detection.detection_id for r in offline if isinstance(r, FeatureRecord)}
    assert got == _first_crops(crops, 2, 6.0, gap)

    bus, topic, metrics = _hard_shedding_reid_stage(settings, extractor, crops, shed_hard_crops=2)
    sightings = [r for r in topic if isinstance(r, Detection)]
    assert len(topic) == len(crops) and len(sightings) == len(crops) - len(kept)
    assert metrics.crops_shed._value.get() == len(sightings)

    # the real matcher stage over that topic: tracklets span their tracks
    cfg = {"end_gap_s": 3.0, "idle_end_s": 1e6}
    matcher = settings.matcher.model_copy(
        update={
            "milvus_uri": str(tmp_path / "h.db"),
            "thumbnails_dir": str(tmp_path / "h-thumbs"),
            "features_dir": str(tmp_path / "h-features"),
            "identities": settings.matcher.identities.model_copy(
                update={**cfg, "store": str(tmp_path / "h.sqlite")}
            ),
        }
    )
    m_metrics = PipelineMetrics()
    reid_done = threading.Event()
    reid_done.set()
    run_matcher_stage(
        settings.model_copy(update={"matcher": matcher}),
        bus,
        m_metrics,
        threading.Event(),
        reid_done,
        extractor,
    )
    assert m_metrics.sightings._value.get() == len(sightings)
    store = IdentityStore(tmp_path / "h.sqlite")
    spans = {
        tid: (first_seen, last_seen)
        for tid, first_seen, last_seen in store.db.execute(
            "SELECT tracklet_id, first_seen, last_seen FROM tracklets"
        )
    }
    # the same tracklets as feeding every crop on time (end gap 3 s: a track gone 3 s is a new tracklet)
    on_time = IdentityStore(tmp_path / "on-time.sqlite")
    service = _service(settings, on_time, **cfg)
    _feed(service, [r for r in records if r.detection.track_id >= 0])
    service.finish()
    expected = on_time.db.execute("SELECT tracklet_id, first_seen, last_seen FROM tracklets").fetchall()
    assert sorted(spans.items()) == sorted((tid, (a, b)) for tid, a, b in expected)
    long_tracks = [k for k, (a, b) in spans.items() if b - a > cfg["end_gap_s"]]
    assert long_tracks, "the fixture should have tracks longer than the end gap"
    store.close()
    on_time.close()

    bad = settings.reid.model_copy(update={"shed_after_s": 0.0, "shed_hard_after_s": 5.0})
    with pytest.raises(ValueError, match="shed_hard_after_s"):
        type(bad).model_validate(bad.model_dump())


def test_past_the_strict_bound_no_crop_is_extracted_and_its_tracklet_stays_due():
    """reid.shed_all_after_s: a crop later than that is shed even if it is its tracklet's first (hard
    shedding alone would extract it), and the tracklet's next crop in time is extracted; redelivery gets
    the same answers; the setting must lie above reid.shed_hard_after_s."""
    from pgr.settings import ReidSettings
    from reid.sampling import TrackSampler

    now = [1000.0]
    sampler = TrackSampler(
        0.0,
        shed_after_s=0.25,
        shed_every_s=6.0,
        clock=lambda: now[0],
        gap_s=3.0,
        shed_hard_after_s=1.0,
        shed_all_after_s=2.0,
    )

    def crop(det_id: str, track: int, t: float, late_s: float) -> Detection:
        det = _det(det_id, "c1", t, track, int(t * 10))
        return dataclasses.replace(det, read_at=now[0] - late_s)

    first_a, second_a = crop("a1", 1, 10.0, 2.5), crop("a2", 1, 12.0, 0.5)
    first_b, second_b = crop("b1", 2, 10.0, 1.5), crop("b2", 2, 12.0, 1.5)
    assert [sampler.decide(d) for d in (first_a, first_b)] == ["shed", "extract"]  # b: first, hard only
    assert [sampler.decide(d) for d in (second_a, second_b)] == ["extract", "shed"]  # a was still due
    assert [sampler.decide(d) for d in (first_a, first_b, second_a, second_b)] == [
        "shed",
        "extract",
        "extract",
        "shed",
    ]
    without = TrackSampler(
        0.0, shed_after_s=0.25, shed_every_s=6.0, clock=lambda: now[0], gap_s=3.0, shed_hard_after_s=1.0
    )
    assert without.decide(first_a) == "extract"  # hard shedding alone extracts a late first crop
    with pytest.raises(ValueError, match="shed_all_after_s"):
        ReidSettings.model_validate({"shed_after_s": 0.25, "shed_hard_after_s": 1.0, "shed_all_after_s": 0.5})
    with pytest.raises(ValueError, match="shed_all_after_s"):
        ReidSettings.model_validate({"shed_after_s": 0.25, "shed_all_after_s": 2.0})


def test_sightings_before_a_tracklets_first_crop_are_where_it_begins(pets):
    """Sightings of a track with no tracklet yet (its first crops were passed over for a better one) are
    held: the tracklet its next crop starts within the end gap begins at them; held sightings no crop
    follows, and sightings of an ended tracklet, are counted as unmatched and dropped."""
    _, records, _, _ = pets
    real = records[0]

    def rec(det_id: str, t: float, track: int) -> FeatureRecord:
        return dataclasses.replace(real, detection=_det(det_id, "pets", t, track, int(t)))

    book = TrackletBook(keep_best=2, end_gap_s=3.0, idle_end_s=1e9, cameras=["pets"])
    assert book.sighted(_det("pets:100:t1", "pets", 100.0, 1, 100), 0.0) is None
    assert book.sighted(_det("pets:102:t1", "pets", 102.0, 1, 102), 0.0) is None
    t1 = book.add(rec("pets:104:t1", 104.0, 1), "", 0.0)
    assert (t1.first_seen, t1.last_seen, t1.n_crops) == (100.0, 104.0, 1)  # begins at its first sighting
    assert book.sighted(_det("pets:105:t1", "pets", 105.0, 1, 105), 0.0) is t1 and t1.last_seen == 105.0

    book.sighted(_det("pets:200:t2", "pets", 200.0, 2, 200), 0.0)  # no crop of it comes within the gap
    book.sighted(_det("pets:204:t3", "pets", 204.0, 3, 204), 0.0)
    assert {t.tracklet_id for t in book.due(0.0)} == {"pets:t1"} and "pets:t2" not in book.pending
    assert book.counts["sighting_unmatched"] == 1
    t2 = book.add(rec("pets:205:t2", 205.0, 2), "", 0.0)
    assert t2.first_seen == 205.0  # its held sighting was dropped: the tracklet begins at its crop
    assert book.sighted(_det("pets:106:t1", "pets", 106.0, 1, 106), 0.0) is None  # t1 ended: unmatched
    assert book.counts["sighting_unmatched"] == 2


def test_a_late_crop_of_a_lapsed_stretch_of_sightings_spans_it(pets):
    """Pending sightings that no crop followed within the end gap are remembered a while: a crop of that
    stretch extracted late (the re-ID stage's rescue) starts a tracklet that spans the whole stretch, and
    its sightings are counted as rescued; a crop outside the stretch does not reach back to it."""
    _, records, _, _ = pets
    real = records[0]

    def rec(det_id: str, t: float, track: int) -> FeatureRecord:
        return dataclasses.replace(real, detection=_det(det_id, "pets", t, track, int(t)))

    book = TrackletBook(keep_best=2, end_gap_s=3.0, idle_end_s=1e9, cameras=["pets"])
    for t in (100.0, 101.0, 102.0):
        book.sighted(_det(f"pets:{t:.0f}:t1", "pets", t, 1, int(t)), 0.0)
    book.sighted(_det("pets:106:t2", "pets", 106.0, 2, 106), 0.0)  # the camera streams on
    assert book.due(0.0) == [] and "pets:t1" not in book.pending
    assert book.counts["sighting_unmatched"] == 3
    t1 = book.add(rec("pets:101:t1", 101.0, 1), "", 0.0)  # the stretch's crop, extracted after all
    assert (t1.first_seen, t1.last_seen, t1.n_crops) == (100.0, 102.0, 1)
    assert book.counts["sighting_rescued"] == 3
    assert [t.tracklet_id for t in book.due(0.0)] == ["pets:t1"]  # its camera is past it: decided at once

    book.sighted(_det("pets:110:t3", "pets", 110.0, 3, 110), 0.0)
    book.sighted(_det("pets:120:t4", "pets", 120.0, 4, 120), 0.0)
    book.due(0.0)
    t3 = book.add(rec("pets:115:t3", 115.0, 3), "", 0.0)  # 5 s after the stretch: a tracklet of its own
    assert (t3.first_seen, t3.last_seen) == (115.0, 115.0) and book.counts["sighting_rescued"] == 3


def test_a_track_shed_whole_is_rescued_once_it_has_ended(pets):
    """reid.shed_rescue_tracks: of a track whose crops were all shed past reid.shed_all_after_s (its tracklet
    has none extracted) the stage keeps the best crop by quality; once its camera's stream has run the end
    gap past it and the stage is back under the bound, that crop is extracted and published after all
    (counted). A track whose later crop is extracted in time needs no rescue; at most so many tracks wait
    (the oldest goes, counted); 0 turns rescue off."""
    from pgr.messages import CropRecord, encode_crop
    from reid.sampling import TrackSampler, record_quality
    from reid.service import ReidWorker

    settings, records, extractor, _ = pets
    jpegs = list(dict.fromkeys(r.jpeg for r in records))[:2]
    now = 1000.0

    def crop(
        det_id: str, track: int, t: float, late_s: float, jpeg: bytes = jpegs[0], camera: str = "c1"
    ) -> CropRecord:
        det = dataclasses.replace(_det(det_id, camera, t, track, int(t * 10)), read_at=now - late_s)
        return CropRecord(det, jpeg)

    a1, a2 = crop("a1", 1, 10.0, 6.0, jpegs[0]), crop("a2", 1, 11.0, 6.0, jpegs[1])
    batches = [
        [a1, a2, crop("b1", 2, 11.0, 6.0)],  # all past the bound: shed, tracks 1 and 2 kept
        [crop("b2", 2, 12.0, 0.0)],  # in time: track 2's tracklet gets a crop the usual way
        [crop("d1", 3, 14.5, 6.0)],  # track 1 has ended (3.5 s since), but the stage is still behind
        [crop("e1", 4, 15.0, 0.0)],  # in time again: track 1's best crop is extracted after all
        [crop("f1", 5, 19.0, 0.0, camera="c2")],  # c1 is quiet, c2 is past track 3 by the gap and skew
        [crop("g1", 6, 19.6, 0.0, camera="c2")],
    ]
    best = max((a1, a2), key=record_quality).detection.detection_id

    def run(rescue_tracks: int) -> tuple[list[str], PipelineMetrics, ReidWorker]:
        sampler = TrackSampler(
            0.0,
            shed_after_s=0.25,
            shed_every_s=6.0,
            clock=lambda: now,
            gap_s=3.0,
            shed_hard_after_s=4.0,
            shed_all_after_s=5.0,
        )
        bus, metrics = InProcessBus(capacity=1000), PipelineMetrics()
        worker = ReidWorker(extractor, bus.producer(), "f", "dlq", metrics, sampler, rescue_tracks)
        for batch in batches:
            for c in batch:
                bus.producer().send("crops", encode_crop(c))
            worker.handle(bus.records("crops")[-len(batch) :])
        topic = [decode_features_topic(m.value) for m in bus.records("f")]
        assert len([r for r in topic if isinstance(r, Detection)]) == 4  # every shed crop: a sighting
        return [r.detection.detection_id for r in topic if isinstance(r, FeatureRecord)], metrics, worker

    out, metrics, worker = run(8)
    # track 3 waits while it may still go on: c2 at 19.0 is not yet 3 s + the 2 s skew past it
    assert out == ["b2", "e1", best, "f1", "g1", "d1"]
    assert metrics.crops_rescued._value.get() == 2 and metrics.crops_rescue_dropped._value.get() == 0
    assert not worker.kept
    out, metrics, _ = run(0)
    assert out == ["b2", "e1", "f1", "g1"] and metrics.crops_rescued._value.get() == 0
    out, metrics, worker = run(1)  # track 2 pushes track 1 out, then gets its crop the usual way
    assert out == ["b2", "e1", "f1", "g1", "d1"] and metrics.crops_rescue_dropped._value.get() == 1


def _good_crops(
    crops: list, quality: dict[str, float], q_min: float, wait: int, gap_s: float, wait_s: float = 0.0
) -> set[str]:
    """The crops hard shedding keeps with a quality floor, written out (one per tracklet): of each track's
    tracklet the first crop of quality `q_min` or more among its first `wait`, else its `wait`-th, or (with
    `wait_s`) its first crop `wait_s` or more after its first, whichever comes first."""
    kept: set[str] = set()
    state: dict[int, tuple[float, int, bool, float]] = {}  # track -> (last seen, crops, kept one, began)
    for c in crops:
        d = c.detection
        seen, count, done, began = state.get(d.track_id, (-math.inf, 0, False, d.timestamp))
        if d.timestamp - seen > gap_s:
            count, done, began = 0, False, d.timestamp
        count += 1
        waited = 0 < wait_s <= d.timestamp - began
        if not done and (quality[d.detection_id] >= q_min or count == wait or waited):
            kept.add(d.detection_id)
            done = True
        state[d.track_id] = (max(seen, d.timestamp), count, done, began)
    return kept


def _late_floor_sampler(crops: list, gap_s: float, q_min: float, wait: int, wait_s: float = 0.0):
    """A TrackSampler with a quality floor that finds every one of `crops` late: hard shedding throughout."""
    from reid.sampling import TrackSampler

    newest_read = max(c.detection.read_at for c in crops)
    return TrackSampler(
        0.0,
        shed_after_s=1.0,
        shed_every_s=2.0,
        clock=lambda: newest_read + 60,
        gap_s=gap_s,
        shed_hard_after_s=30.0,
        hard_min_quality=q_min,
        hard_wait_crops=wait,
        hard_wait_s=wait_s,
    )


def _floor_kept_offline_and_by_the_stage(
    pets, crops: list, q_min: float, wait: int, wait_s: float = 0.0
) -> tuple[set[str], set[str]]:
    """The crops hard shedding with this quality floor extracts, as the offline stand-in
    (`identity_eval.sampled`) and as the real re-ID stage decide them."""
    from pgr.app.identity_eval import sampled

    settings, records, extractor, _ = pets
    tracked = [r for r in records if r.detection.track_id >= 0]
    gap = settings.matcher.identities.end_gap_s
    offline = sampled(tracked, math.inf, gap, min_quality=q_min, wait_crops=wait, wait_s=wait_s)
    floor = {"shed_hard_min_quality": q_min, "shed_hard_wait_crops": wait, "shed_hard_wait_s": wait_s}
    _, topic, _ = _hard_shedding_reid_stage(settings, extractor, crops, **floor)
    return (
        {r.detection.detection_id for r in offline if isinstance(r, FeatureRecord)},
        {r.detection.detection_id for r in topic if isinstance(r, FeatureRecord)},
    )


def test_hard_shedding_waits_for_a_good_crop_of_each_tracklet(pets):
    """reid.shed_hard_min_quality: under hard shedding a tracklet's one crop is its first good one (the
    matcher's crop quality), or its shed_hard_wait_crops-th when none of those is; decided at arrival, the
    same on redelivery, by the re-ID stage as by the offline stand-in."""
    from pgr.messages import CropRecord
    from reid.sampling import record_quality

    settings, records, _, _ = pets
    crops = [CropRecord(r.detection, r.jpeg) for r in records if r.detection.track_id >= 0]
    quality = {c.detection.detection_id: record_quality(c) for c in crops}
    q_min = float(np.median(list(quality.values())))
    gap = settings.matcher.identities.end_gap_s
    asked: list[str] = []

    def quality_of(c: CropRecord) -> float:
        asked.append(c.detection.detection_id)
        return quality[c.detection.detection_id]

    sampler = _late_floor_sampler(crops, gap, q_min, 3)
    decisions = [sampler.decide(c.detection, quality=partial(quality_of, c)) for c in crops]
    kept = _good_crops(crops, quality, q_min, 3, gap)
    assert [d == "extract" for d in decisions] == [c.detection.detection_id in kept for c in crops]
    firsts = _first_crops(crops, 1, 2.0, gap)
    assert kept != firsts and len(kept) <= len(firsts)
    assert np.mean([quality[k] for k in kept]) > np.mean([quality[k] for k in firsts])
    assert len(asked) < len(crops)  # only due crops are weighed (a decode each)
    again = [sampler.decide(c.detection, quality=partial(quality_of, c)) for c in crops]
    assert again == decisions  # redelivered: the same answers

    assert _floor_kept_offline_and_by_the_stage(pets, crops, q_min, 3) == (kept, kept)


def test_hard_shedding_waits_for_a_good_crop_at_most_so_many_seconds(pets):
    """reid.shed_hard_wait_s: the wait for a good crop in stream seconds, whatever the crop rate; the
    sampler, the offline stand-in and the re-ID stage keep the crops of the rule written out."""
    from pgr.messages import CropRecord
    from reid.sampling import record_quality

    settings, records, _, _ = pets
    crops = [CropRecord(r.detection, r.jpeg) for r in records if r.detection.track_id >= 0]
    quality = {c.detection.detection_id: record_quality(c) for c in crops}
    q_min = float(np.quantile(list(quality.values()), 0.9))  # most tracklets wait
    gap, wait_s = settings.matcher.identities.end_gap_s, 1.0
    sampler = _late_floor_sampler(crops, gap, q_min, 1000, wait_s)
    decisions = [sampler.decide(c.detection, quality=partial(record_quality, c)) for c in crops]
    kept = _good_crops(crops, quality, q_min, 1000, gap, wait_s)
    assert [d == "extract" for d in decisions] == [c.detection.detection_id in kept for c in crops]
    by_quality_alone = _good_crops(crops, quality, q_min, 1000, gap)
    assert kept != by_quality_alone and len(kept) > len(by_quality_alone)  # the wait gave poor tracklets one

    assert _floor_kept_offline_and_by_the_stage(pets, crops, q_min, 1000, wait_s) == (kept, kept)


def test_process_cpu_seconds_for_the_replay_report():
    import os

    from pgr.app.identity_eval import own_cpu_s, process_cpu_s

    sum(i * i for i in range(200_000))  # some CPU of our own
    mine = process_cpu_s(os.getpid())
    assert mine is not None and 0 < mine <= own_cpu_s() + 0.05
    assert process_cpu_s(None) is None and process_cpu_s(2**22 + 12345) is None


def test_a_process_groups_cpu_seconds_count_its_children():
    import subprocess
    import sys

    from pgr.app.identity_eval import process_cpu_s

    # a leader that runs a busy child in its own process group, as noida-db's launcher runs its broker
    busy = "import time; t = time.process_time() + 0.6\nwhile time.process_time() < t: pass\ntime.sleep(30)"
    leader = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {busy!r}])"],
        start_new_session=True,
    )
    try:
        time.sleep(3)  # the child's 0.6 s of CPU is spent by then
        alone, group = process_cpu_s(leader.pid), process_cpu_s(leader.pid, group=True)
        assert alone is not None and group is not None
        assert group - alone >= 0.5, (alone, group)
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def test_the_replay_report_splits_the_latency_and_finds_its_stretch():
    from pgr.app.identity_eval import latency_by_minutes, latency_parts

    # track a: its last crop extracted, 0.5 s in transit, decided 0.8 s after; track b: its last crop shed
    # 0.3 s after the last extracted one, which was 2 s in transit (a busy stretch)
    published_last = {"c1:t1": 100.0, "c2:t2": 200.3}
    read_at = {"c1:t1": 100.0, "c2:t2": 200.0}
    arrived_at = {"c1:t1": 100.5, "c2:t2": 202.0}
    decided = {"c1:t1": 101.3, "c2:t2": 202.9}
    parts = latency_parts(published_last, read_at, arrived_at, decided)
    assert parts["transit"]["p95"] == pytest.approx(2.0, abs=0.08)
    assert parts["after_arrival"]["median"] == pytest.approx(0.85, abs=0.06)
    assert parts["unextracted"]["p95"] == pytest.approx(0.3, abs=0.02)
    assert parts["transit"]["median_of_slowest_5pct"] == pytest.approx(2.0)  # b is the slowest
    by = latency_by_minutes({"c1:t1": 1.3, "c2:t2": 2.6}, {"c1:t1": 30.0, "c2:t2": 700.0})
    assert by == {
        "0-10": {"median": 1.3, "p95": 1.3, "n": 1},
        "10-20": {"median": 2.6, "p95": 2.6, "n": 1},
    }
    assert latency_parts({}, {}, {}, {}) == {}


def test_the_replay_report_gives_quality_per_stretch_of_stream():
    from pathlib import Path

    from pgr.app.identity_eval import ReplayCrop, quality_by_minutes

    # minute 0-10: persons 1 and 2 kept apart; minute 10-20: persons 3 and 4 wrongly merged
    crops = [
        ReplayCrop(Path("x.jpg"), pid, "c1", frame, t, track)
        for pid, frame, t, track in [
            (1, 1, 0.0, 1),
            (1, 2, 60.0, 1),
            (2, 3, 120.0, 2),
            (3, 4, 700.0, 3),
            (4, 5, 710.0, 4),
        ]
    ]
    truth = {c.detection_id: c.pid for c in crops}
    predicted = {c.detection_id: "a" if c.pid == 1 else "b" if c.pid == 2 else "m" for c in crops}
    by = quality_by_minutes(crops, truth, predicted)
    assert list(by) == ["0-10", "10-20"]
    assert by["0-10"]["pair_precision"] == 1.0 and by["0-10"]["crops_a_minute"] == 0.3
    assert by["10-20"]["pair_precision"] == 0.0 and by["10-20"]["idf1"] == 0.5


def test_folding_the_stream_lays_its_stretches_over_each_other(pets):
    """`calibrate --fold 2`: the two halves of a stream share one clock, twice as dense, with distinct
    tracks and detection ids, frame numbers in step with time, and each crop's own features."""
    from pathlib import Path

    from pgr.app.identity_eval import BASE_TIME, ReplayCrop, fold, folded

    _, records, _, _ = pets
    crops = [
        ReplayCrop(Path(f"{t}.jpg"), t % 3, "c1", 60 * t, float(t), t // 10 % 2) for t in range(0, 100, 10)
    ]
    two = fold(crops, 2, 60.0)
    assert [c.time for c in two] == [0, 10, 20, 30, 40, 5, 15, 25, 35, 45]  # pieces of 45 s
    assert all(c.frame == 60 * c.time for c in two)
    assert {c.track for c in two[5:]} == {100_000, 100_001} and len({c.detection_id for c in two}) == 10
    assert fold(crops, 1, 60.0) == crops
    own = dict(zip((c.path for c in crops), records, strict=False))
    laid, feats = folded(crops, records[: len(crops)], 2, 60.0)
    assert [c.time for c in laid] == sorted(c.time for c in two)
    for c, r in zip(laid, feats, strict=True):
        assert (r.detection.detection_id, r.detection.timestamp) == (c.detection_id, BASE_TIME + c.time)
        assert r.detection.track_id == c.track and r.instance is own[c.path].instance
