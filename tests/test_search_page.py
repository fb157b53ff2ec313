"""The search page in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python client)
against a real server (uvicorn) over a real index of a real clip: log in, upload a person crop, search,
read the PGR scores, confirm a result, search again with it (query expansion), open a result in its frame,
export the confirmed results; the screenshot is saved as a test artifact (tests/artifacts/). An admin erases
the identity of a confirmed result."""

from __future__ import annotations

import io
import re
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest
import uvicorn
from conftest import free_port, operator_config, wait_for_port

from matcher.identity_store import IdentityStore, identity_of, timeline
from matcher.open_index import open_index
from pgr.app.indexing import index_files
from pgr.app.pipeline import build_extractor
from pgr.app.web.app import create_app
from pgr.app.web.audit import AuditLog
from pgr.app.web.auth import UserStore
from pgr.settings import load_settings

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
PASSWORD = "page test password"


@pytest.fixture(scope="module")
def server(tmp_path_factory, pets_clip):
    """A clip indexed as camera `gate`, served by uvicorn on a free loopback port."""
    tmp = tmp_path_factory.mktemp("page")
    port = free_port()
    settings = load_settings(operator_config(tmp, port=port))
    extractor = build_extractor(settings.reid)
    index_files(settings, [pets_clip], "gate", extractor, start=time.time() - 600, bars=False)
    UserStore(settings.users_file).set("olga", PASSWORD, "viewer")
    UserStore(settings.users_file).set("ada", PASSWORD, "admin")
    index = open_index(settings.matcher)
    rows = index.get(index.all_ids())
    index.close()
    query_row = max(rows, key=lambda d: d.box[3] - d.box[1])  # the largest crop: a clear query
    query = shutil.copy(query_row.thumbnail, tmp / "query.jpg")
    app = create_app(settings, extractor=extractor, retention_thread=False)
    srv = uvicorn.Server(uvicorn.Config(app, host=settings.serve.host, port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for_port(port)
    yield settings, f"http://127.0.0.1:{port}", Path(query), query_row, len(rows)
    srv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail("no /usr/bin/chromium: apt-get install chromium (CI does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def wait_js(page, expression: str, timeout_s: float = 30.0) -> None:
    """Wait until `expression` is true in the page (polled from here: the page's CSP forbids the in-page
    eval that Playwright's wait_for_function uses)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout_s}s: {expression}"
        time.sleep(0.1)


def test_an_operator_searches_confirms_expands_opens_the_frame_and_exports(server, browser, tmp_path):
    settings, url, query, query_row, indexed = server
    page = browser.new_page(viewport={"width": 1366, "height": 768}, accept_downloads=True)
    outside = []  # the page must load nothing from anywhere but this server
    page.on("request", lambda r: None if r.url.startswith((url, "blob:", "data:")) else outside.append(r.url))
    page.goto(url)
    page.fill("input[name=username]", "olga")
    page.fill("input[name=password]", "wrong one")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("text=Wrong user name or password.")
    page.fill("input[name=password]", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#search-view:not([hidden])")
    assert page.text_content("#who") == "olga (viewer)"
    assert page.is_hidden("#erase-button") and page.is_hidden("#login-view")  # admins only; logged in
    page.wait_for_selector("#cameras input[value=gate]")

    page.set_input_files("#image", str(query))
    page.click("#search-button")
    page.wait_for_selector("#results .card")
    cards = page.locator("#results .card")
    assert cards.count() == min(24, indexed)  # the first page
    assert f"{indexed} results" in page.text_content("#summary")
    assert cards.first.get_attribute("data-id") == query_row.detection_id  # the person themself first
    assert "1 query crop" in page.text_content("#summary")
    cards.first.locator("summary").click()
    scores = cards.first.locator(".pgr").text_content()
    # the query crop against its own indexed row: 1.000 in f32 / bf16, 0.999 in int8 (JPEG round trip)
    instance = re.search(r"instance (\d\.\d{3})", scores)
    assert instance and float(instance[1]) >= 0.99 and "part" in scores and "pixel" in scores, scores

    second = cards.nth(1).get_attribute("data-id")
    cards.nth(1).locator(".same-button").click()
    cards.nth(2).locator(".not-button").click()
    rejected = cards.nth(2).get_attribute("data-id")
    assert page.text_content("#confirmed-count") == "1"
    wait_js(page, "document.querySelector('#results .card img').naturalWidth > 0")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "search_page.png"))
    page.screenshot(path=str(ARTIFACTS / "search_page.jpg"), type="jpeg", quality=70)  # README's (docs/)

    page.click("#expand-button")
    page.wait_for_selector("text=2 query crops (with the confirmed crops)")
    ids = page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.id)")
    assert second in ids[:2] and rejected not in ids
    assert page.locator(f"#results .card.same[data-id='{second}']").count() == 1

    page.locator("#results .card img").first.click()
    wait_js(page, "document.getElementById('frame-image').naturalWidth > 0")
    assert page.evaluate("document.getElementById('frame-image').naturalWidth") == 480  # PETS 2009: 480 x 360
    assert "gate" in page.text_content("#frame-caption")
    page.screenshot(path=str(ARTIFACTS / "search_page_frame.png"))
    page.keyboard.press("Escape")

    with page.expect_download() as download:
        page.click("#export-button")
    saved = tmp_path / "export.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as z:
        table = io.TextIOWrapper(z.open("results.csv")).read().splitlines()
        assert len(table) == 2 and table[1].startswith(second + ",")
        assert len([n for n in z.namelist() if n.startswith("thumbnails/")]) == 1
    assert outside == []

    entries = [e for e in AuditLog(settings.audit_log).entries() if e["user"] == "olga"]
    actions = [e["action"] for e in entries]
    assert actions[:2] == ["login_failed", "login"] and "frame" in actions and actions[-1] == "export"
    searches = [e for e in entries if e["action"] == "search"]
    assert searches[0]["query"]["upload"]["bytes"] == query.stat().st_size
    assert searches[1]["query"]["query_ids"] == [second] and searches[1]["query"]["exclude_ids"] == [rejected]


def test_an_admin_erases_the_identity_of_a_confirmed_result(server, browser):
    settings, url, query, query_row, indexed = server
    store = IdentityStore(settings.matcher.identity_store_path)
    ident = identity_of(store, query_row)
    assert ident is not None and timeline(store, ident)
    store.close()
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(url)
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#search-view:not([hidden])")
    assert page.is_visible("#erase-identity-button") and page.is_disabled("#erase-identity-button")
    page.set_input_files("#image", str(query))
    page.click("#search-button")
    page.wait_for_selector("#results .card")
    card = page.locator(f"#results .card[data-id='{query_row.detection_id}']")
    card.locator(".same-button").click()
    asked = []

    def answer(dialog) -> None:
        asked.append(dialog.message)
        dialog.accept("SAR-page-1")

    page.on("dialog", answer)
    page.click("#erase-identity-button")
    page.wait_for_selector("text=1 identity erased")
    assert ident in asked[0]
    erased = int(page.text_content("#summary").split(": ")[1].split()[0])
    assert erased >= 1 and page.text_content("#confirmed-count") == "0"

    store = IdentityStore(settings.matcher.identity_store_path)
    assert timeline(store, ident) == []
    store.close()
    entry = AuditLog(settings.audit_log).entries()[-1]
    assert entry["action"] == "identity_erasure" and entry["user"] == "ada"
    assert entry["reason"] == "SAR-page-1"
    assert entry["query"] == {"identity_id": ident} and entry["detections"] == erased
    page.click("#search-button")  # the person's crops are gone from the results
    page.wait_for_selector("#results .card")
    ids = page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.id)")
    assert query_row.detection_id not in ids
    assert f"{indexed - erased} results" in page.text_content("#summary")
