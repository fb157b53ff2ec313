"""Retention: detections seen longer ago than `serve.retention_days` (or their camera's own period) are
deleted by the server (index row, thumbnail, features, and in the identity store the tracklets and kept
crops), the rest kept, and the purge is audited."""

from __future__ import annotations

import json
import time

import pytest
from conftest import operator_config, write_clip
from fastapi.testclient import TestClient
from pydantic import ValidationError

from matcher.detection_files import detection_path
from matcher.feature_store import FeatureStore
from matcher.identity_store import IdentityStore
from matcher.open_index import open_index
from matcher.retention import Retention, purge_expired
from matcher.thumbnails import ThumbnailStore
from pgr.app.indexing import index_files
from pgr.app.pipeline import build_extractor
from pgr.app.web.app import create_app
from pgr.app.web.audit import AuditLog
from pgr.app.web.auth import UserStore
from pgr.settings import ServeSettings, load_settings

DAY = 86400.0


def _files(settings, d) -> list:
    return [detection_path(settings.matcher.thumbnails_dir, d.camera_id, d.detection_id, ".jpg")]


def _stored(settings, d) -> list[bytes]:
    """The detection's pixel features and instance vector as stored, or [] when it has none."""
    f = FeatureStore(settings.matcher.feature_store_dir).load(d.camera_id, d.detection_id)
    return [] if f is None else [f.pixels.tobytes(), f.instance.tobytes()]


def _on_disk(folder, patterns: list[bytes]) -> bool:
    """Whether any file under `folder` holds any of these bytes."""
    blobs = [p.read_bytes() for p in folder.rglob("*") if p.is_file()]
    return any(pattern in blob for pattern in patterns for blob in blobs)


def test_the_server_deletes_what_is_older_than_the_retention_period(tmp_path, pets_video):
    settings = load_settings(operator_config(tmp_path / "var", retention_days=30))
    extractor = build_extractor(settings.reid)
    now = time.time()
    old = write_clip(pets_video, tmp_path / "old", 3, every=60)
    new = write_clip(pets_video, tmp_path / "new", 3, every=70)
    index_files(settings, [old], "old", extractor, start=now - 40 * DAY, bars=False)
    index_files(settings, [new], "new", extractor, start=now - 29 * DAY, bars=False)
    index = open_index(settings.matcher)
    rows = index.get(index.all_ids())
    index.close()
    expired = [d for d in rows if d.camera_id == "old"]
    kept = [d for d in rows if d.camera_id == "new"]
    assert expired and kept
    assert all(p.is_file() for d in rows for p in _files(settings, d))
    assert all(_stored(settings, d) for d in rows)
    # both clips start with the video's first frame: its crops' features are kept with the new clip
    shared = {b for d in kept for b in _stored(settings, d)}
    erased = [b for d in expired for b in _stored(settings, d) if b not in shared]
    assert erased and _on_disk(settings.matcher.feature_store_dir, erased)

    UserStore(settings.users_file).set("ada", "a long password", "admin")
    app = create_app(settings, extractor=extractor)  # applies the retention at start, then hourly
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while not app.state.pgr.last_purge and time.monotonic() < deadline:
            time.sleep(0.2)
        assert app.state.pgr.last_purge["deleted"] == len(expired)
        token = client.post("/api/login", data={"username": "ada", "password": "a long password"}).json()
        status = client.get("/api/status", headers={"Authorization": f"Bearer {token['token']}"}).json()
        assert status["detections"] == len(kept) and status["retention_days"] == 30
        again = client.post("/api/retention/apply", headers={"Authorization": f"Bearer {token['token']}"})
        assert again.json() == {"deleted": 0}

    index = open_index(settings.matcher)
    assert index.get([d.detection_id for d in expired]) == [] and index.older_than(now - 30 * DAY) == []
    assert sorted(d.detection_id for d in index.get(index.all_ids())) == sorted(d.detection_id for d in kept)
    index.close()
    assert not any(p.exists() for d in expired for p in _files(settings, d))  # gone from the disk
    assert not any(_stored(settings, d) for d in expired)
    assert not _on_disk(settings.matcher.feature_store_dir, erased)
    assert all(p.is_file() for d in kept for p in _files(settings, d))
    assert all(_stored(settings, d) for d in kept)
    purges = [e for e in AuditLog(settings.audit_log).entries() if e["action"] == "retention"]
    assert purges[0]["deleted"] == len(expired) and purges[0]["retention_days"] == 30
    assert purges[1]["user"] == "ada" and purges[1]["deleted"] == 0


def test_retention_per_camera_and_of_the_identity_state(tmp_path, pets_video, pets_clip):
    """`brief` keeps 2 days (its clip straddles the cutoff), `archive` is kept for good although 40 days
    old, against a global 30 days; the identity store loses what expired, tracklet by tracklet and kept crop
    by kept crop."""
    settings = load_settings(
        operator_config(
            tmp_path / "var", retention_days=30, retention_days_by_camera={"brief": 2, "archive": None}
        )
    )
    extractor = build_extractor(settings.reid)
    start = time.time() - 40 * DAY
    index_files(settings, [pets_clip], "brief", extractor, start=start, bars=False)
    stills = write_clip(pets_video, tmp_path / "archive", 3, every=60)
    index_files(settings, [stills], "archive", extractor, start=start, bars=False)
    m = settings.matcher
    index = open_index(m)
    rows = index.get(index.all_ids())
    before = _identity_rows(m.identity_store_path)
    now = start + 2 * DAY + 3.0  # the cutoff of `brief` falls in the middle of its clip
    expired = [d for d in rows if d.camera_id == "brief" and d.timestamp < start + 3.0]
    kept = [d for d in rows if d not in expired]
    assert expired and {d.camera_id for d in kept} == {"brief", "archive"}
    straddling = [t for t, r in before.items() if r[0] == "brief" and r[1] < start + 3.0 <= r[2]]
    assert straddling and any(c[1] < start + 3.0 for t in straddling for c in before[t][3])

    stores = (index, ThumbnailStore(m.thumbnails_dir), FeatureStore(m.feature_store_dir))
    purged = purge_expired(*stores, now, Retention.from_settings(settings.serve), m.identity_store_path)
    assert purged.detections == len(expired)
    assert sorted(d.detection_id for d in index.get(index.all_ids())) == sorted(d.detection_id for d in kept)
    index.close()
    assert not any(p.exists() for d in expired for p in _files(settings, d))
    assert not any(_stored(settings, d) for d in expired) and all(_stored(settings, d) for d in kept)
    assert all(p.is_file() for d in kept for p in _files(settings, d))

    after = _identity_rows(m.identity_store_path)
    gone = {t for t, r in before.items() if r[0] == "brief" and r[2] < start + 3.0}
    assert gone and set(after) == set(before) - gone and purged.tracklets == len(gone)
    assert all(after[t] == before[t] for t in after if before[t][0] == "archive")  # kept for good
    for t in straddling:
        assert after[t][3] == [c for c in before[t][3] if c[1] >= start + 3.0]  # kept crops that expired go
    store = IdentityStore(m.identity_store_path)
    assert not any(e.tracklet_id in gone for e in store.events())
    store.close()


def _identity_rows(path) -> dict[str, tuple]:
    """tracklet id -> (camera, first seen, last seen, kept crops [id, time, quality, thumbnail])."""
    store = IdentityStore(path)
    rows = store.db.execute(
        "SELECT tracklet_id, camera_id, first_seen, last_seen, meta FROM tracklets"
    ).fetchall()
    store.close()
    return {t: (cam, first, last, json.loads(meta)["best"]) for t, cam, first, last, meta in rows}


def test_retention_per_camera_is_checked():
    with pytest.raises(ValidationError, match="bad camera id '../x'"):
        ServeSettings(retention_days_by_camera={"../x": 3})
    with pytest.raises(ValidationError, match="retention of camera gate: want a number of days > 0"):
        ServeSettings(retention_days_by_camera={"gate": 0})
