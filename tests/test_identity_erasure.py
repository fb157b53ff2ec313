"""Erasure of everything stored about one global identity, on real components: a PETS clip through the real
detector, tracker, re-ID model and matcher into a milvus-lite index and the identity store; erased through
the API (admin only, audited), through `pgr erase`, and while a matcher is running; then replayed."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import operator_config
from fastapi.testclient import TestClient

from matcher.detection_files import detection_path
from matcher.erasure import UnknownIdentity, erase_detections, erase_identity
from matcher.feature_store import FeatureStore
from matcher.identity_service import IdentityService
from matcher.identity_store import IdentityStore, list_identities, timeline
from matcher.open_index import open_index
from matcher.retention import DAY, Retention, purge_expired
from matcher.service import MatcherWorker
from matcher.thumbnails import ThumbnailStore
from matcher.tombstones import Tombstones, track_of
from pgr.app.cli import main as pgr_main
from pgr.app.indexing import index_files, load_state, save_state
from pgr.app.pipeline import build_extractor, model_signature, run_ingest_stage, run_reid_stage
from pgr.app.web.app import create_app
from pgr.app.web.audit import AuditLog
from pgr.app.web.auth import UserStore
from pgr.messages import decode_feature, encode_feature, track_key
from pgr.metrics import PipelineMetrics, counter_total
from pgr.settings import load_settings
from pgr.transport import InProcessBus
from reid.retrieval import RetrievalParams

PASSWORD = "correct horse 1"


def _tracklets(store_path) -> dict[str, tuple[str, list[str]]]:
    """tracklet id -> (identity id, detection ids it saw), as the store holds them."""
    store = IdentityStore(store_path)
    try:
        rows = store.db.execute("SELECT tracklet_id, identity_id, meta FROM tracklets").fetchall()
    finally:
        store.close()
    return {tid: (ident, json.loads(meta)["seen"]) for tid, ident, meta in rows}


def _files(settings, det_ids: list[str]) -> list:
    cam = det_ids[0].split(":")[0]
    return [detection_path(settings.matcher.thumbnails_dir, cam, d, ".jpg") for d in det_ids]


def _features(settings, det_ids: list[str]) -> list[bool]:
    """Per detection: whether the feature store holds its part and pixel features."""
    store = FeatureStore(settings.matcher.feature_store_dir)
    return [store.load("", d) is not None for d in det_ids]


def _disk_bytes(store_path) -> bytes:
    """The identity store as it lies on the disk: the file and its write-ahead log."""
    return b"".join(
        p.read_bytes() for p in (store_path, store_path.with_name(store_path.name + "-wal")) if p.exists()
    )


def _quoted(text: str) -> bytes:
    """How an id is written in the store's JSON (quoted: `cam:1:t3` is no match inside `cam:1:t31`)."""
    return json.dumps(text).encode()


def _biggest(store_path) -> tuple[str, list[str], list[str]]:
    """The identity with the most detections: its id, tracklet ids and detection ids."""
    by_identity: dict[str, tuple[list[str], list[str]]] = {}
    for tid, (ident, seen) in _tracklets(store_path).items():
        tids, dets = by_identity.setdefault(ident, ([], []))
        tids.append(tid)
        dets.extend(seen)
    ident = max(by_identity, key=lambda i: (len(by_identity[i][1]), i))
    return ident, *by_identity[ident]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, pets_clip):
    """The clip indexed by `pgr index`'s pipeline as camera `gate`, with accounts; the settings and model."""
    tmp = tmp_path_factory.mktemp("erase")
    settings = load_settings(operator_config(tmp, retention_days=None))
    extractor = build_extractor(settings.reid)
    index_files(settings, [pets_clip], "gate", extractor, start=time.time() - 3600, bars=False)
    users = UserStore(settings.users_file)
    users.set("ada", PASSWORD, "admin")
    users.set("vic", PASSWORD, "viewer")
    return settings, extractor


def _bearer(client, user) -> dict:
    r = client.post("/api/login", data={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_erasing_an_identity_through_the_api_deletes_everything_about_it(indexed, pets_clip):
    settings, extractor = indexed
    m = settings.matcher
    store_path = m.identity_store_path
    ident, tids, det_ids = _biggest(store_path)
    assert len(det_ids) >= 3 and all(p.is_file() for p in _files(settings, det_ids))
    assert all(_features(settings, det_ids))
    others = {t: v for t, v in _tracklets(store_path).items() if v[0] != ident}
    assert others, "the clip has more than one person"
    assert _quoted(det_ids[0]) in _disk_bytes(store_path)

    app = create_app(settings, extractor=extractor, retention_thread=False)
    with TestClient(app) as client:
        viewer, admin = _bearer(client, "vic"), _bearer(client, "ada")
        total = client.get("/api/status", headers=admin).json()["detections"]
        url = f"/api/identities/{ident}/erasure"
        r = client.post(url, json={"reason": "SAR-1"}, headers=viewer)
        assert r.status_code == 403 and "admin" in r.text
        assert client.get(f"/api/identities/{ident}/timeline", headers=viewer).status_code == 200
        r = client.post("/api/identities/id:gate:t999/erasure", json={"reason": "SAR-1"}, headers=admin)
        assert r.status_code == 404 and r.json()["detail"] == "no identity 'id:gate:t999'"
        assert client.post(url, json={"reason": ""}, headers=admin).status_code == 422  # a reason is required

        r = client.post(url, json={"reason": "SAR-2"}, headers=admin)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["identity_id"] == ident and body["identities"] == [ident]
        assert body["tracklets"] == len(tids) and body["detections"] == len(set(det_ids))
        assert body["events"] >= len(tids)  # at least each tracklet's decision at its end

        # gone from the API: the identity, each detection, and from every search
        r = client.get(f"/api/identities/{ident}/timeline", headers=admin)
        assert r.status_code == 404
        for d in det_ids:
            assert client.get(f"/api/detections/{d}", headers=admin).status_code == 404
        assert client.get("/api/status", headers=admin).json()["detections"] == total - len(set(det_ids))
        again = client.post(url, json={"reason": "SAR-2"}, headers=admin)
        assert again.status_code == 404 and f"identity {ident!r} was erased" in again.json()["detail"]

    # gone from the disk: thumbnails, features, and the identity store's rows (overwritten, not unlinked)
    assert not any(p.exists() for p in _files(settings, det_ids)) and not any(_features(settings, det_ids))
    assert set(_tracklets(store_path)) == set(others)
    store = IdentityStore(store_path)
    assert timeline(store, ident) == [] and ident not in {s.identity_id for s in list_identities(store)}
    assert store.events(ident) == [] and not any(e.tracklet_id in tids for e in store.events())
    state = json.loads(store.db.execute("SELECT value FROM state").fetchone()[0])
    assert ident not in state["members"] and not set(tids) & set(state["current"].values())
    store.close()
    disk = _disk_bytes(store_path)
    assert not any(_quoted(d) in disk for d in det_ids)
    index = open_index(m)
    assert index.get(det_ids) == []
    assert not {track_key(d) for d in index.get(index.all_ids())} & {track_of(t) for t in tids}
    index.close()

    entry = [e for e in AuditLog(settings.audit_log).entries() if e["action"] == "identity_erasure"][-1]
    assert entry["user"] == "ada" and entry["reason"] == "SAR-2" and entry["query"] == {"identity_id": ident}
    assert entry["detections"] == len(set(det_ids)) and entry["tracklets"] == len(tids)
    assert time.time() - entry["time"] < 300

    # a replay: the same file indexed again from its start (as after an interruption) brings nothing back
    state = load_state(settings.indexed_files)
    (entry,) = state.values()
    entry.done = False
    save_state(settings.indexed_files, state)
    (again,) = index_files(settings, [pets_clip], "gate", extractor, start=entry.start_time, bars=False)
    assert again.done and again.detections == total - len(set(det_ids))
    index = open_index(m)
    assert index.get(det_ids) == [] and index.count() == total - len(set(det_ids))
    index.close()
    assert not {track_of(t) for t in _tracklets(store_path)} & {track_of(t) for t in tids}
    assert not any(p.exists() for p in _files(settings, det_ids)) and not any(_features(settings, det_ids))


def test_pgr_erase_on_the_command_line(indexed, capsys):
    settings, _ = indexed
    store_path = settings.matcher.identity_store_path
    ident, tids, det_ids = _biggest(store_path)
    cfg = ["--config", str(settings.matcher.thumbnails_dir.parent / "config.yaml")]
    assert pgr_main(["erase", "--identity", ident, "--reason", "SAR-3", "--by", "clerk", *cfg]) == 0
    out = capsys.readouterr().out
    assert (
        f"identity {ident} erased: {len(tids)} tracklets" in out and f"{len(set(det_ids))} detections" in out
    )
    assert ident not in {v[0] for v in _tracklets(store_path).values()}
    entry = AuditLog(settings.audit_log).entries()[-1]
    assert entry["action"] == "identity_erasure" and entry["user"] == "clerk" and entry["via"] == "cli"
    assert pgr_main(["erase", "--identity", ident, "--reason", "SAR-3", *cfg]) == 1
    assert f"identity {ident!r} was erased" in capsys.readouterr().err
    assert pgr_main(["erase", "--identity", "id:nobody", "--reason", "SAR-3", *cfg]) == 1
    assert "no identity 'id:nobody'" in capsys.readouterr().err
    assert not any(p.exists() for p in _files(settings, det_ids)) and not any(_features(settings, det_ids))


@pytest.fixture(scope="module")
def records(tmp_path_factory, pets_clip):
    """Settings and the feature records of the clip as camera `gate` (real detector, tracker, re-ID)."""
    tmp = tmp_path_factory.mktemp("live")
    camera = {"id": "gate", "source": str(pets_clip), "fps": 2, "start_time": 1231322400.0}
    settings = load_settings(operator_config(tmp), overrides={"cameras": [camera]})
    extractor = build_extractor(settings.reid)
    bus, stop, done = InProcessBus(capacity=100_000), threading.Event(), threading.Event()
    run_ingest_stage(settings, bus, PipelineMetrics(), stop)
    done.set()
    run_reid_stage(settings, bus, PipelineMetrics(), stop, done, extractor)
    feats = [decode_feature(m.value) for m in bus.records(settings.topics.features)]
    assert len(feats) >= 20, len(feats)
    return settings, feats, model_signature(extractor, settings.reid)


class _Matcher:
    """The matcher's worker over a bus, as `run_matcher_stage` wires it, driven batch by batch."""

    def __init__(self, settings, model_dim) -> None:
        m = settings.matcher
        self.bus, self.metrics = InProcessBus(capacity=100_000), PipelineMetrics()
        self.index = open_index(m, dim=model_dim[1], model=model_dim[0])
        self.store = IdentityStore(m.identity_store_path)
        self.tombstones = Tombstones(m.identity_store_path)
        self.identities = IdentityService(
            m.identities,
            RetrievalParams.from_settings(m),
            self.store,
            self.bus.producer(),
            "ids",
            self.metrics,
        )
        self.stores = (self.index, ThumbnailStore(m.thumbnails_dir), FeatureStore(m.feature_store_dir))
        self.worker = MatcherWorker(
            *self.stores,
            self.bus.producer(),
            "dlq",
            self.metrics,
            model=model_dim[0],
            identities=self.identities,
            tombstones=self.tombstones,
        )
        self.consumer = self.bus.consumer(["features"], "matcher")

    def feed(self, recs) -> None:
        producer = self.bus.producer()
        for r in recs:
            producer.send("features", encode_feature(r))
        while batch := self.consumer.poll(max_records=8, timeout_s=0.1):
            self.worker.handle(batch)
            self.consumer.commit()

    def close(self) -> None:
        self.index.close()
        self.store.close()
        self.tombstones.close()


def test_a_running_matcher_forgets_an_erased_identity_and_a_replay_brings_nothing_back(records):
    settings, recs, model_dim = records
    store_path = settings.matcher.identity_store_path
    recs = sorted(recs, key=lambda r: (r.detection.timestamp, r.detection.detection_id))
    # the longest track, cut after the crops that get it decided: the matcher holds the person in memory
    key, n = Counter(track_key(r.detection) for r in recs).most_common(1)[0]
    need = settings.matcher.identities.min_crops
    assert n > need, "the clip has a track longer than min_crops"
    split = [r.detection.timestamp for r in recs if track_key(r.detection) == key][need]
    first = [r for r in recs if r.detection.timestamp < split]
    matcher = _Matcher(settings, model_dim)
    matcher.feed(first)
    ident = {track_of(t): v[0] for t, v in _tracklets(store_path).items()}[key]
    assert ident in matcher.identities.identities.members

    erased = erase_identity(store_path, *matcher.stores, ident)
    assert erased.detections == sum(1 for r in first if track_key(r.detection) == key) > 0
    # overwritten on the disk while the matcher holds the file open: no copy in the file or its log
    disk = _disk_bytes(store_path)
    assert not any(_quoted(r.detection.detection_id) in disk for r in first if track_key(r.detection) == key)
    with pytest.raises(UnknownIdentity, match="was erased"):
        erase_identity(store_path, *matcher.stores, ident)

    rest = [r for r in recs if r.detection.timestamp >= split]
    matcher.feed(rest[:8])  # the next save drops the identity from the matcher's memory
    assert ident not in matcher.identities.identities.members
    assert not any(track_of(t) == key for t in matcher.identities.tracklets.tracklets)
    matcher.feed(rest[8:] + first)  # the rest of the person's track, then a replay of the first half
    matcher.identities.finish()
    of_key = [r for r in recs if track_key(r.detection) == key]
    assert counter_total(matcher.metrics.records_erased) == len(of_key)
    assert not any(track_key(d) == key for d in matcher.index.get(matcher.index.all_ids()))
    kept = {r.detection.detection_id for r in recs} - {r.detection.detection_id for r in of_key}
    assert matcher.index.count() == len(kept)
    matcher.close()
    assert not any(track_of(t) == key for t in _tracklets(store_path))
    store = IdentityStore(store_path)
    assert ident not in {s.identity_id for s in list_identities(store)} and store.events(ident) == []
    store.close()

    # a restarted matcher loads a state without the person, and a full replay indexes none of it
    restarted = _Matcher(settings, model_dim)
    assert ident not in restarted.identities.identities.members
    restarted.feed(recs)
    restarted.identities.finish()
    assert not any(track_key(d) == key for d in restarted.index.get(restarted.index.all_ids()))
    assert counter_total(restarted.metrics.records_erased) == len(of_key)
    restarted.close()
    assert not any(track_of(t) == key for t in _tracklets(store_path))
    gone = [r.detection.detection_id for r in of_key]
    assert not any(p.exists() for p in _files(settings, gone)) and not any(_features(settings, gone))


def _fed(records, folder):
    """A matcher with its index, files and identity store in an empty folder, fed the whole clip (its
    tracklets ended and decided): the settings, records, model and the matcher."""
    settings, recs, model_dim = records
    m = settings.matcher.model_copy(
        update={
            "milvus_uri": str(folder / "pgr.db"),
            "thumbnails_dir": folder / "thumbnails",
            "features_dir": folder / "features",
        }
    )
    settings = settings.model_copy(update={"matcher": m})
    matcher = _Matcher(settings, model_dim)
    matcher.feed(recs)
    matcher.identities.finish()
    return settings, recs, model_dim, matcher


def test_erasing_a_kept_crop_takes_it_out_of_its_tracklet_in_the_store_and_the_running_matcher(
    records, tmp_path_factory
):
    settings, recs, model_dim, matcher = _fed(records, tmp_path_factory.mktemp("kept"))
    store_path = settings.matcher.identity_store_path
    # the best crop of the longest tracklet: its tracklet's thumbnail, features kept in the store
    tracklet = max(matcher.identities.tracklets.tracklets.values(), key=lambda t: (t.n_crops, t.tracklet_id))
    crop = max(tracklet.best, key=lambda c: c.quality)
    row = "SELECT n_crops, thumbnail, meta FROM tracklets WHERE tracklet_id = ?"
    store = IdentityStore(store_path)
    n, thumb, meta = store.db.execute(row, (tracklet.tracklet_id,)).fetchone()
    store.close()
    assert thumb == crop.thumbnail and crop.detection_id in json.loads(meta)["seen"]
    assert _quoted(crop.detection_id) in _disk_bytes(store_path)

    (found,) = erase_detections(store_path, *matcher.stores, [crop.detection_id])
    assert found.detection_id == crop.detection_id and not Path(crop.thumbnail).exists()
    store = IdentityStore(store_path)
    n2, thumb2, meta2 = store.db.execute(row, (tracklet.tracklet_id,)).fetchone()
    assert n2 == n - 1 and thumb2 and thumb2 != crop.thumbnail
    meta2 = json.loads(meta2)
    assert crop.detection_id not in meta2["seen"] and crop.detection_id not in [c[0] for c in meta2["best"]]
    assert not any(e.thumbnail == crop.thumbnail for e in store.events())
    store.close()
    disk = _disk_bytes(store_path)
    assert _quoted(crop.detection_id) not in disk and crop.thumbnail.encode() not in disk

    # the running matcher forgets it at its next save (its replayed record is dropped), and keeps it out
    (replayed,) = [r for r in recs if r.detection.detection_id == crop.detection_id]
    matcher.feed([replayed])
    assert crop.detection_id not in tracklet.seen and crop not in tracklet.best
    assert tracklet.n_crops == n - 1 and counter_total(matcher.metrics.records_erased) == 1
    matcher.close()
    store = IdentityStore(store_path)
    n3, _, meta3 = store.db.execute(row, (tracklet.tracklet_id,)).fetchone()
    store.close()
    assert n3 == n - 1 and crop.detection_id not in json.loads(meta3)["seen"]
    assert _quoted(crop.detection_id) not in _disk_bytes(store_path)


def test_a_running_matcher_forgets_expired_tracklets_at_its_next_save(records, tmp_path_factory):
    settings, recs, model_dim, matcher = _fed(records, tmp_path_factory.mktemp("expired"))
    store_path = settings.matcher.identity_store_path
    book, identities = matcher.identities.tracklets, matcher.identities.identities
    cutoff = min(r.detection.timestamp for r in recs) + 3.0
    old = {tid for tid, t in book.tracklets.items() if t.last_seen < cutoff}
    assert old and set(book.tracklets) - old

    retention, now = Retention(None, {"gate": 2.0}), cutoff + 2 * DAY  # the cutoff falls mid-clip
    purged = purge_expired(*matcher.stores, now, retention, store_path)
    young = [r for r in recs if r.detection.timestamp >= cutoff]
    assert purged.tracklets == len(old) and purged.detections == len(recs) - len(young)
    matcher.identities.finish()  # a save: the matcher applies the retention run to its memory
    assert not old & set(book.tracklets) and not any(
        c.timestamp < cutoff for t in book.tracklets.values() for c in t.best
    )
    assert all(m in identities.tracklets for ms in identities.members.values() for m in ms)
    assert set(_tracklets(store_path)) == set(book.tracklets)  # the store as the memory, nothing written back
    matcher.close()

    # restarted, and fed the whole clip again: the expired crops come back (no tombstones) without harm, and
    # the next run deletes them again
    restarted = _Matcher(settings, model_dim)
    assert set(restarted.identities.tracklets.tracklets) == set(_tracklets(store_path))
    restarted.feed(recs)
    restarted.identities.finish()
    assert restarted.index.count() == len(recs)
    again = purge_expired(*restarted.stores, now, retention, store_path)
    assert again.detections == len(recs) - len(young) and restarted.index.count() == len(young)
    restarted.close()
