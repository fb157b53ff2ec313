"""Retention: detections seen longer ago than `serve.retention_days` are deleted by the server (index row,
thumbnail, features), the rest kept, and the purge is audited."""

from __future__ import annotations

import time

from conftest import operator_config, write_clip
from fastapi.testclient import TestClient

from matcher.detection_files import detection_path
from matcher.feature_store import FeatureStore
from matcher.open_index import open_index
from pgr.app.indexing import index_files
from pgr.app.pipeline import build_extractor
from pgr.app.web.app import create_app
from pgr.app.web.audit import AuditLog
from pgr.app.web.auth import UserStore
from pgr.settings import load_settings

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
    erased = [b for d in expired for b in _stored(settings, d)]
    assert _on_disk(settings.matcher.feature_store_dir, erased)

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
