"""Search: by an uploaded image and/or by detections already indexed (a picked query, confirmed results:
query expansion), filtered by cameras and time, paged. Every search is audited."""

from __future__ import annotations

import hashlib
import time
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, UploadFile, status

from matcher.search import ModelMismatch, fuse_rankings, search_features
from pgr.app.web.auth import CurrentUser
from pgr.app.web.schemas import SearchHit, SearchResult
from pgr.images import BadImage, ImageTooLarge, check_declared_size, decode_image
from pgr.messages import CropFeatures
from pgr.validation import is_camera_id, is_detection_id

router = APIRouter(tags=["search"])
# Pillow's names of the formats each accepted content type may hold
_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/bmp": "BMP"}
MAX_QUERY_IDS = 50


def read_upload(request: Request, upload: UploadFile) -> tuple[bytes, object]:
    """The upload's bytes and decoded image, within the limits; 413/415/422 with a clear message."""
    serve = request.app.state.pgr.settings.serve
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype not in serve.upload_types:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"upload of type {ctype or 'unknown'!r}: send one of {', '.join(serve.upload_types)}",
        )
    data = upload.file.read(serve.max_upload_bytes + 1)
    if len(data) > serve.max_upload_bytes:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"upload larger than the {serve.max_upload_bytes}-byte limit",
        )
    try:
        kind = check_declared_size(data, serve.max_upload_pixels) if data else None
        if kind is not None and _FORMATS.get(ctype) not in (None, kind):
            raise BadImage(f"the file is {kind}, not the {ctype} it claims to be")
        image = decode_image(data, serve.max_upload_bytes, serve.max_upload_pixels)
    except BadImage as exc:
        too_big = isinstance(exc, ImageTooLarge)
        code = status.HTTP_413_CONTENT_TOO_LARGE if too_big else status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
        raise HTTPException(code, f"upload refused: {exc}") from None
    return data, image


@router.post("/search", response_model=SearchResult)
def search(
    request: Request,
    user: CurrentUser,
    image: UploadFile | None = None,
    query_ids: Annotated[list[str], Form(description="indexed detections to search with too")] = [],  # noqa: B006
    exclude_ids: Annotated[list[str], Form(description="results rejected: never shown")] = [],  # noqa: B006
    cameras: Annotated[list[str], Form(description="only these cameras (none: all)")] = [],  # noqa: B006
    since: Annotated[float | None, Form(description="unix seconds")] = None,
    until: Annotated[float | None, Form(description="unix seconds")] = None,
    page: Annotated[int, Form(ge=0, le=10000)] = 0,
    page_size: Annotated[int, Form(ge=1, le=200)] = 24,
) -> SearchResult:
    """Ranked detections most like the query: an uploaded person image, indexed detections (`query_ids`),
    or both; with several query crops each detection counts at its best score (query expansion)."""
    state, started = request.app.state.pgr, time.perf_counter()
    if image is None and not query_ids:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give an image or query_ids")
    if len(query_ids) > MAX_QUERY_IDS:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"at most {MAX_QUERY_IDS} query_ids")
    bad = [i for i in [*query_ids, *exclude_ids] if not is_detection_id(i)]
    bad += [c for c in cameras if not is_camera_id(c)]
    if bad:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"bad detection or camera id {bad[0]!r}")
    for name, t in (("since", since), ("until", until)):
        if t is not None and not -1e11 < t < 1e11:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: not a unix time")
    upload = None
    if image is not None:
        data, pixels = read_upload(request, image)
        upload = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "name": image.filename}
    # every query ranks its top max_results (stage 1 fetches max(n1, that) anyway): `total` is then the
    # number of matches up to that cap, and any page is a slice of one stable ranking
    cap = top_k = state.settings.serve.max_results
    with state.lock:
        queries: list[CropFeatures] = []
        if image is not None:
            queries.append(state.extractor.extract([pixels])[0])
        missing = []
        for det in _found(state, query_ids, missing):
            stored = state.features.load(det.camera_id, det.detection_id)
            queries.append(stored or CropFeatures(instance=state.index.vector(det.detection_id)))
        if missing:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no detection {missing[0]!r} in the index")
        try:
            rankings = [
                search_features(
                    state.index,
                    q,
                    state.extractor.name,
                    top_k=top_k,
                    camera=cameras or None,
                    since=since,
                    until=until,
                    features=state.features,
                    params=state.params,
                )
                for q in queries
            ]
        except ModelMismatch as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    fused = fuse_rankings(rankings, exclude=set(exclude_ids))[:cap]
    start = page * page_size
    hits = [SearchHit.ranked(start + i + 1, d) for i, d in enumerate(fused[start : start + page_size])]
    state.audit.append(
        user.name,
        "search",
        query={"upload": upload, "query_ids": query_ids, "exclude_ids": exclude_ids},
        filters={"cameras": cameras, "since": since, "until": until, "page": page, "page_size": page_size},
        result_count=len(hits),
        total=len(fused),
    )
    state.metrics.search_latency.observe(time.perf_counter() - started)
    return SearchResult(results=hits, total=len(fused), page=page, page_size=page_size, queries=len(queries))


def _found(state, ids: list[str], missing: list[str]):
    """The indexed detections with these ids, in order; ids not in the index go to `missing`."""
    by_id = {d.detection_id: d for d in state.index.get(list(dict.fromkeys(ids)))} if ids else {}
    missing += [i for i in ids if i not in by_id]
    return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]
