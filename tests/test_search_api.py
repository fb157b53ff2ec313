"""The search API through FastAPI's TestClient over a real index of a real clip (the shipped model):
login and roles, refused anonymous calls, CSRF, refused uploads, search by upload and by detection with
filters, paging and query expansion, the frame, export, erasure and the audit log."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import zipfile

import cv2
import numpy as np
import pytest
from conftest import operator_config, write_clip
from fastapi.testclient import TestClient
from test_image_bombs import png_declaring

from pgr.app.indexing import index_files
from pgr.app.pipeline import build_extractor
from pgr.app.web.app import create_app
from pgr.app.web.audit import AuditLog
from pgr.app.web.auth import UserStore
from pgr.settings import load_settings

PASSWORD = "correct horse 1"
HOUR = 3600.0


@pytest.fixture(scope="module")
def served(tmp_path_factory, pets_clip, pets_video):
    """A clip indexed as camera `gate` (an hour ago) and stills as camera `desk` (two days ago), served."""
    tmp = tmp_path_factory.mktemp("api")
    settings = load_settings(operator_config(tmp, max_upload_bytes=300_000, max_upload_pixels=1_000_000))
    extractor = build_extractor(settings.reid)
    now = time.time()
    index_files(settings, [pets_clip], "gate", extractor, start=now - HOUR, bars=False)
    stills = write_clip(pets_video, tmp / "stills", 4, every=40)
    index_files(settings, [stills], "desk", extractor, start=now - 48 * HOUR, bars=False)
    users = UserStore(settings.users_file)
    users.set("ada", PASSWORD, "admin")
    users.set("vic", PASSWORD, "viewer")
    app = create_app(settings, extractor=extractor, retention_thread=False)
    with TestClient(app) as client:
        yield settings, app, client


def login(client: TestClient, user: str = "vic") -> dict:
    r = client.post("/api/login", data={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()


def bearer(client: TestClient, user: str = "vic") -> dict:
    """Headers of an API client (no cookie: a fresh client state)."""
    token = login(client, user)["token"]
    client.cookies.clear()
    return {"Authorization": f"Bearer {token}"}


def audit(settings) -> list[dict]:
    return AuditLog(settings.audit_log).entries()


def thumbnail_bytes(client, headers, det_id) -> bytes:
    r = client.get(f"/api/detections/{det_id}/thumbnail", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    return r.content


def search(client, headers, image: bytes | None = None, **form) -> dict:
    files = {"image": ("q.jpg", image, "image/jpeg")} if image is not None else None
    r = client.post("/api/search", files=files, data=form, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_every_api_route_refuses_anonymous_calls(served):
    settings, app, client = served
    client.cookies.clear()
    checked = 0
    for path, methods in app.openapi()["paths"].items():
        if not path.startswith("/api") or path == "/api/login":
            continue
        for method in methods:
            url = path.replace("{det_id}", "gate:x:1:t1").replace("{identity_id}", "1")
            r = client.request(method, url, json={"detection_ids": ["a"], "reason": "x"})
            assert r.status_code == 401, (method, path, r.status_code)
            checked += 1
    assert checked >= 11
    # the page itself is public (it holds no data), the data behind it are not
    assert client.get("/").status_code == 200 and "Log in" in client.get("/").text


def test_login_failures_are_refused_and_audited(served):
    settings, _, client = served
    r = client.post("/api/login", data={"username": "vic", "password": "wrong password"})
    assert r.status_code == 401 and "wrong user name or password" in r.text
    r = client.post("/api/login", data={"username": "nobody", "password": PASSWORD})
    assert r.status_code == 401
    failed = [e for e in audit(settings) if e["action"] == "login_failed"]
    assert [e["user"] for e in failed[-2:]] == ["vic", "nobody"]


def test_password_guessing_is_throttled_per_account(served):
    settings, _, client = served
    UserStore(settings.users_file).set("guessed", PASSWORD, "viewer")
    for i in range(5):
        r = client.post("/api/login", data={"username": "guessed", "password": f"guess {i}"})
        assert r.status_code == 401
    r = client.post("/api/login", data={"username": "guessed", "password": PASSWORD})  # even the right one
    assert r.status_code == 429 and "too many failed logins" in r.text and int(r.headers["Retry-After"]) > 0
    assert audit(settings)[-1]["action"] == "login_refused"
    assert client.post("/api/login", data={"username": "vic", "password": PASSWORD}).status_code == 200


def test_the_password_file_holds_argon2_hashes_only(served):
    settings, _, _ = served
    text = settings.users_file.read_text()
    assert PASSWORD not in text and text.count("$argon2id$") == len(json.loads(text)) >= 2
    assert oct(settings.users_file.stat().st_mode & 0o777) == "0o600"


def test_a_cookie_session_needs_the_csrf_token_to_change_anything(served):
    settings, _, client = served
    csrf = login(client)["csrf_token"]
    ids = client.post("/api/export", json={"detection_ids": ["gate:x:0:t1"]})
    assert ids.status_code == 403 and "X-CSRF-Token" in ids.text
    assert client.get("/api/status").status_code == 200  # reading needs no token
    r = client.post("/api/search", data={"query_ids": ["nope:1"]}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 404  # past the CSRF check
    client.post("/api/logout", headers={"X-CSRF-Token": csrf})
    assert client.get("/api/status").status_code == 401


def test_a_request_from_another_site_is_refused(served):
    settings, _, client = served
    evil = {"Origin": "https://evil.example"}
    r = client.post("/api/login", data={"username": "vic", "password": PASSWORD}, headers=evil)
    assert r.status_code == 403 and "cross-site" in r.text
    same = {"Origin": "http://testserver"}
    assert client.post("/api/login", data={"username": "vic", "password": PASSWORD}, headers=same).is_success


def test_status_counts_per_camera(served):
    settings, _, client = served
    status = client.get("/api/status", headers=bearer(client)).json()
    cams = {c["id"]: c for c in status["cameras"]}
    assert set(cams) == {"gate", "desk"} and cams["gate"]["files"] == 1
    assert status["detections"] == cams["gate"]["detections"] + cams["desk"]["detections"] > 0
    assert status["model"].startswith("pgr-")


def test_search_by_upload_finds_that_person_first_with_the_pgr_scores(served):
    settings, _, client = served
    h = bearer(client)
    status = client.get("/api/status", headers=h).json()
    first = search(client, h, image=_any_thumbnail(client, h), page_size=5)
    top = first["results"][0]
    assert top["rank"] == 1 and top["score"] > 0.95
    assert top["s_ins"] is not None and top["s_part"] is not None and top["s_pixel"] is not None
    assert first["total"] == status["detections"]  # under the result cap, every detection is ranked
    scores = [r["score"] for r in first["results"]]
    assert scores == sorted(scores, reverse=True)


def _any_thumbnail(client, headers) -> bytes:
    r = search_ids(client, headers)
    return thumbnail_bytes(client, headers, r[len(r) // 2])


def search_ids(client, headers) -> list[str]:
    """Every detection id (searching with an all-grey image ranks the whole index)."""
    grey = cv2.imencode(".jpg", np.full((256, 128, 3), 128, np.uint8))[1].tobytes()
    return [r["detection_id"] for r in search(client, headers, image=grey, page_size=200)["results"]]


def test_filters_and_pages(served):
    settings, _, client = served
    h = bearer(client)
    query = _any_thumbnail(client, h)
    desk = search(client, h, image=query, cameras=["desk"], page_size=200)
    assert desk["total"] > 0 and {r["camera"] for r in desk["results"]} == {"desk"}
    assert all(r["track"] == -1 for r in desk["results"])
    now = time.time()
    recent = search(client, h, image=query, since=now - 2 * HOUR, until=now, page_size=200)
    assert {r["camera"] for r in recent["results"]} == {"gate"}
    assert all(now - 2 * HOUR <= r["time"] <= now for r in recent["results"])
    both = search(client, h, image=query, page_size=200)
    assert both["total"] == desk["total"] + recent["total"]
    p0 = search(client, h, image=query, page=0, page_size=4)["results"]
    p1 = search(client, h, image=query, page=1, page_size=4)["results"]
    assert [r["rank"] for r in p0 + p1] == list(range(1, 9))
    assert [r["detection_id"] for r in p0 + p1] == [r["detection_id"] for r in both["results"][:8]]


def test_search_by_a_detection_and_query_expansion(served):
    settings, _, client = served
    h = bearer(client)
    ids = search_ids(client, h)
    picked = ids[0]
    by_id = search(client, h, query_ids=[picked], page_size=200)
    assert by_id["queries"] == 1 and by_id["results"][0]["detection_id"] == picked
    second = by_id["results"][1]["detection_id"]
    rejected = by_id["results"][2]["detection_id"]
    expanded = search(client, h, query_ids=[picked, second], exclude_ids=[rejected], page_size=200)
    got = [r["detection_id"] for r in expanded["results"]]
    assert expanded["queries"] == 2 and set(got[:2]) == {picked, second} and rejected not in got
    # each detection at its best score over the queries: never lower than with one query alone
    one = {r["detection_id"]: r["score"] for r in by_id["results"]}
    assert all(r["score"] >= one[r["detection_id"]] - 1e-6 for r in expanded["results"])


def _jpeg_of_size(w: int, h: int) -> bytes:
    return cv2.imencode(".jpg", np.full((h, w, 3), 90, np.uint8))[1].tobytes()


@pytest.mark.parametrize(
    "name,data,ctype,code,message",
    [
        ("text", b"just some text", "text/plain", 415, "upload of type 'text/plain'"),
        ("fake", b"not an image at all", "image/jpeg", 415, "not an image format"),
        (
            "png-as-jpeg",
            cv2.imencode(".png", np.zeros((64, 32, 3), np.uint8))[1].tobytes(),
            "image/jpeg",
            415,
            "the file is PNG, not the image/jpeg",
        ),
        ("bomb", png_declaring(30000, 30000), "image/png", 413, "exceeds the 1000000-pixel limit"),
        ("pixels", _jpeg_of_size(1200, 1000), "image/jpeg", 413, "1200x1000 pixels exceeds"),
        ("bytes", _jpeg_of_size(64, 32) + bytes(310_000), "image/jpeg", 413, "300000-byte limit"),
        ("empty", b"", "image/jpeg", 415, "empty image"),
    ],
    ids=["text", "fake", "png-as-jpeg", "bomb", "pixels", "bytes", "empty"],
)
def test_bad_uploads_are_refused_with_a_clear_message_and_change_nothing(
    served, name, data, ctype, code, message
):
    settings, _, client = served
    h = bearer(client)
    before = client.get("/api/status", headers=h).json()["detections"]
    searches = sum(e["action"] == "search" for e in audit(settings))
    r = client.post("/api/search", files={"image": ("q", data, ctype)}, headers=h)
    assert r.status_code == code and message in r.json()["detail"], (name, r.status_code, r.text)
    assert client.get("/api/status", headers=h).json()["detections"] == before
    assert sum(e["action"] == "search" for e in audit(settings)) == searches  # nothing ran


def test_an_oversized_request_is_refused_before_it_is_read(served):
    settings, _, client = served
    h = bearer(client)
    big = b"\xff\xd8\xff" + bytes(2_000_000)
    r = client.post("/api/search", files={"image": ("q.jpg", big, "image/jpeg")}, headers=h)
    assert r.status_code == 413 and "limited to 300000 bytes" in r.text


def test_every_search_and_export_is_audited(served):
    settings, _, client = served
    h = bearer(client)
    query = _any_thumbnail(client, h)
    result = search(client, h, image=query, cameras=["gate"], since=1.0, page_size=3)
    entry = audit(settings)[-1]
    assert entry["user"] == "vic" and entry["action"] == "search" and time.time() - entry["time"] < 60
    assert entry["query"]["upload"]["sha256"] == hashlib.sha256(query).hexdigest()
    assert entry["filters"] == {"cameras": ["gate"], "since": 1.0, "until": None, "page": 0, "page_size": 3}
    assert entry["result_count"] == len(result["results"]) == 3

    ids = [r["detection_id"] for r in result["results"]]
    r = client.post("/api/export", json={"detection_ids": ids}, headers=h)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    entry = audit(settings)[-1]
    assert (
        entry["action"] == "export" and entry["query"]["detection_ids"] == ids and entry["result_count"] == 3
    )
    z = zipfile.ZipFile(io.BytesIO(r.content))
    rows = list(csv.DictReader(io.TextIOWrapper(z.open("results.csv"))))
    assert [row["detection_id"] for row in rows] == ids
    for row in rows:
        crop = cv2.imdecode(np.frombuffer(z.read(row["thumbnail"]), np.uint8), cv2.IMREAD_COLOR)
        assert crop is not None and crop.shape[0] >= 48


def test_a_frame_is_reread_from_the_file_with_the_box_drawn(served, pets_clip):
    settings, _, client = served
    h = bearer(client)
    det = search(client, h, image=_any_thumbnail(client, h), cameras=["gate"], page_size=1)["results"][0]
    r = client.get(det["frame_url"], headers=h)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    drawn = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    cap = cv2.VideoCapture(str(pets_clip))
    cap.set(cv2.CAP_PROP_POS_FRAMES, det["frame"])
    ok, original = cap.read()
    assert ok and drawn.shape == original.shape
    x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
    edge = drawn[y1:y2, x1 - 1 : x1 + 2].reshape(-1, 3).astype(int).mean(axis=0)
    assert edge[1] > 180 and edge[0] < 80 and edge[2] < 140  # green (BGR) on the box's left edge
    inside = (slice(y1 + 8, y2 - 8), slice(x1 + 8, x2 - 8))
    assert np.abs(drawn[inside].astype(int) - original[inside].astype(int)).mean() < 8  # same frame
    assert audit(settings)[-1]["action"] == "frame"


def test_a_viewer_cannot_erase(served):
    settings, _, client = served
    h = bearer(client, "vic")
    det_id = search_ids(client, h)[-1]
    assert client.delete(f"/api/detections/{det_id}", headers=h).status_code == 403
    assert (
        client.post("/api/erasure", json={"detection_ids": [det_id], "reason": "x"}, headers=h).status_code
        == 403
    )
    assert client.get(f"/api/detections/{det_id}", headers=h).status_code == 200


def _files_of(settings, client, h, det_id):
    from matcher.detection_files import detection_path

    d = client.get(f"/api/detections/{det_id}", headers=h).json()
    return [detection_path(settings.matcher.thumbnails_dir, d["camera"], det_id, ".jpg")]


def _in_files(folder, patterns: list[bytes]) -> list[bool]:
    """Per pattern: whether any file under `folder` holds these bytes."""
    blobs = [p.read_bytes() for p in folder.rglob("*") if p.is_file()]
    return [any(pattern in b for b in blobs) for pattern in patterns]


def test_erasure_of_one_detection_and_of_a_person_is_complete_and_audited(served):
    settings, _, client = served
    h = bearer(client, "ada")
    ids = search_ids(client, h)
    total = len(ids)
    one, person = ids[-1], ids[-3:-1]
    files = {i: _files_of(settings, client, h, i) for i in [one, *person]}
    assert all(p.is_file() for paths in files.values() for p in paths)
    from matcher.feature_store import FeatureStore

    store = FeatureStore(settings.matcher.feature_store_dir)
    pixels = [store.load("", i).pixels.tobytes() for i in [one, *person]]
    assert all(_in_files(settings.matcher.feature_store_dir, pixels))

    r = client.delete(f"/api/detections/{one}", headers=h)
    assert r.status_code == 200 and r.json() == {"erased": [one], "not_found": []}
    r = client.post(
        "/api/erasure", json={"detection_ids": [*person, "gate:none:0:t0"], "reason": "SAR-17"}, headers=h
    )
    assert r.json() == {"erased": person, "not_found": ["gate:none:0:t0"]}
    for det_id in [one, *person]:
        assert client.get(f"/api/detections/{det_id}", headers=h).status_code == 404
        assert not any(p.exists() for p in files[det_id])
        assert FeatureStore(settings.matcher.feature_store_dir).load("", det_id) is None
    assert not any(_in_files(settings.matcher.feature_store_dir, pixels))  # off the disk, not only search
    assert set(search_ids(client, h)) == set(ids) - {one, *person}
    assert len(search_ids(client, h)) == total - 3
    erasures = [e for e in audit(settings) if e["action"] == "erasure"]
    assert erasures[-2]["query"]["detection_ids"] == [one] and erasures[-2]["user"] == "ada"
    assert erasures[-1]["reason"] == "SAR-17" and erasures[-1]["result_count"] == 2


def test_the_identity_timeline_comes_from_the_matchers_identities(served):
    settings, _, client = served
    r = client.get("/api/identities/no-such-identity/timeline", headers=bearer(client))
    assert r.status_code == 404
    from matcher.identity_store import IdentityStore, list_identities

    store = IdentityStore(settings.matcher.identity_store_path)
    known = list_identities(store)
    store.close()
    assert known, "the served index was built by the embedded pipeline, which forms identities"
    r = client.get(f"/api/identities/{known[0].identity_id}/timeline", headers=bearer(client))
    assert r.status_code == 200 and r.json()["tracklets"][0]["camera_id"] == known[0].cameras[0]


def test_the_api_is_documented(served):
    settings, _, client = served
    spec = client.get("/openapi.json").json()
    assert {"/api/search", "/api/login", "/api/export", "/api/status", "/api/erasure"} <= set(spec["paths"])
    hit = spec["components"]["schemas"]["SearchHit"]["properties"]
    assert {"score", "s_ins", "s_part", "s_pixel", "camera", "time", "thumbnail_url"} <= set(hit)


def test_exported_ids_never_read_as_spreadsheet_formulas():
    from pgr.app.web.routes.detections import _cell

    assert [_cell(v) for v in ("-cam:1:t1", "+x", "@x", "=x", "gate:1:t1")] == [
        "'-cam:1:t1",
        "'+x",
        "'@x",
        "'=x",
        "gate:1:t1",
    ]
