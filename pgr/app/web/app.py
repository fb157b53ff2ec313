"""The FastAPI app of `pgr serve`: the API under /api (OpenAPI at /docs), the page at /.

The app is the single process that owns the milvus-lite file (or a client of a Milvus server by URI): run
`pgr index` before serving, or point both at a Milvus server.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from matcher.feature_store import FeatureStore
from matcher.open_index import open_index
from matcher.preload import keep_loaded
from matcher.thumbnails import ThumbnailStore
from pgr.app.pipeline import build_extractor, milvus_token
from pgr.app.web.audit import AuditLog
from pgr.app.web.auth import Sessions, UserStore
from pgr.app.web.routes import auth, detections, identities, search, status
from pgr.app.web.state import AppState
from pgr.settings import Settings
from reid.extractor import FeatureExtractor
from reid.retrieval import RetrievalParams

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
# the page loads nothing from elsewhere; images are the API's own (and blob: for a previewed upload)
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _origin(request: Request) -> str:
    """This server's origin as the browser sees it (scheme://host[:port])."""
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"


def create_app(
    settings: Settings, extractor: FeatureExtractor | None = None, retention_thread: bool = True
) -> FastAPI:
    """The app for these settings; it opens the index now and closes it at shutdown. With
    `retention_thread` it applies the retention periods at start and every `serve.retention_check_s`."""
    m = settings.matcher
    state = AppState(
        settings=settings,
        index=open_index(m, token=milvus_token(settings)),
        thumbnails=ThumbnailStore(m.thumbnails_dir),
        features=FeatureStore(m.feature_store_dir),
        extractor=extractor or build_extractor(settings.reid),
        params=RetrievalParams.from_settings(m),
        users=UserStore(settings.users_file),
        sessions=Sessions(settings.serve.session_hours, settings.sessions_file),
        audit=AuditLog(settings.audit_log),
    )
    if state.users.count() == 0:
        log.warning("no accounts in %s: add one with `pgr user NAME --role admin`", settings.users_file)
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        thread = None
        if retention_thread and state.retention().applies:

            def loop() -> None:
                while True:
                    try:
                        state.purge()
                    except Exception:
                        log.exception("retention: purge failed; trying again later")
                    if stop.wait(settings.serve.retention_check_s):
                        return

            thread = threading.Thread(target=loop, name="retention", daemon=True)
            thread.start()
        preloading = None
        if settings.serve.preload:
            preloading = threading.Thread(
                target=keep_loaded,
                args=(state.index, state.features, stop, settings.serve.preload_check_s),
                name="preload",
                daemon=True,
            )
            preloading.start()
        try:
            yield
        finally:
            stop.set()
            for t in (thread, preloading):
                if t is not None:
                    t.join(timeout=30)
            with state.lock:
                state.index.close()
            state.sessions.close()

    app = FastAPI(
        title="PGR re-ID operator search",
        version="1",
        description="Search recorded footage for a person. Every /api route needs a login "
        "(POST /api/login); searches, exports, frame views and erasures are audited.",
        lifespan=lifespan,
    )
    app.state.pgr = state
    for module in (auth, search, detections, status, identities):
        app.include_router(module.router, prefix="/api")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin and origin != _origin(request):
            # a browser names the page that sent a request: another site's form or script is refused,
            # the login form included (the CSRF token guards everything after it)
            return JSONResponse({"detail": f"cross-site request from {origin} refused"}, status_code=403)
        limit = settings.serve.max_upload_bytes + 64 * 1024  # the image plus the form's other fields
        length = request.headers.get("content-length")
        if request.method == "POST" and length and length.isdigit() and int(length) > limit:
            return JSONResponse(
                {
                    "detail": f"request of {length} bytes: uploads are limited to "
                    f"{settings.serve.max_upload_bytes} bytes"
                },
                status_code=413,
            )
        response = await call_next(request)
        response.headers.update(_HEADERS)
        if request.url.path.startswith("/api"):
            response.headers["Cache-Control"] = "no-store"
        return response

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        """The search page (its data all come from the authenticated API)."""
        return FileResponse(STATIC / "index.html")

    return app
