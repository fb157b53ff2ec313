"""Global identities (the matcher's, matcher/identity_store.py): one identity's timeline across cameras, and
the erasure of everything stored about one identity (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, status
from fastapi import Path as PathParam

from matcher.erasure import UnknownIdentity, erase_identity
from matcher.identity_store import IdentityStore, identity_of, timeline
from pgr.app.web.auth import AdminUser, CurrentUser
from pgr.app.web.routes.detections import DetectionId
from pgr.app.web.schemas import IdentityErasure, IdentityErasureOut

router = APIRouter(tags=["identities"])
IdentityId = Annotated[str, PathParam(max_length=300, pattern=r"^[A-Za-z0-9_.:@+\-]+$")]


@router.get("/identities/{identity_id}/timeline", status_code=200)
def identity_timeline(identity_id: IdentityId, request: Request, user: CurrentUser) -> dict:
    """Where and when one global identity was seen: its tracklets in time order (camera, first and last
    seen, crops, best thumbnail). 404 for an identity the matcher never formed."""
    path = request.app.state.pgr.settings.matcher.identity_store_path
    if not path.exists():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no identities yet: the matcher has formed none")
    store = IdentityStore(path)
    try:
        entries = timeline(store, identity_id)
    finally:
        store.close()
    if not entries:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no identity {identity_id!r}")
    return {"identity": identity_id, "tracklets": [vars(e) for e in entries]}


@router.get("/detections/{det_id}/identity")
def identity_of_detection(det_id: DetectionId, request: Request, user: CurrentUser) -> dict:
    """The global identity a detection belongs to (the person as the matcher linked their tracklets):
    {"detection_id", "identity_id"}. 404 when the detection is not indexed or not linked to one (yet)."""
    state = request.app.state.pgr
    with state.lock:
        found = state.index.get([det_id])
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no detection {det_id!r} in the index")
    path = state.settings.matcher.identity_store_path
    ident = None
    if path.exists():
        store = IdentityStore(path)
        try:
            ident = identity_of(store, found[0])
        finally:
            store.close()
    if ident is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"detection {det_id!r} belongs to no identity")
    return {"detection_id": det_id, "identity_id": ident}


@router.post("/identities/{identity_id}/erasure", response_model=IdentityErasureOut)
def erase_one_identity(
    identity_id: IdentityId, body: IdentityErasure, request: Request, user: AdminUser
) -> IdentityErasureOut:
    """Erase everything stored about one identity, for good: its tracklets (kept crops and features), its
    events, and every detection of its local tracks (index rows, thumbnails, features); tombstones keep a
    replay from bringing any of it back (admin; audited). 404 for an identity that does not exist, saying
    whether it was erased, merged into another or never formed."""
    state = request.app.state.pgr
    try:
        with state.lock:
            erased = erase_identity(
                state.settings.matcher.identity_store_path,
                state.index,
                state.thumbnails,
                state.features,
                identity_id,
            )
    except UnknownIdentity as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    counts = erased.counts()
    state.audit.append(
        user.name,
        "identity_erasure",
        reason=body.reason,
        query={"identity_id": identity_id},
        result_count=erased.detections,
        **counts,
    )
    return IdentityErasureOut(identity_id=identity_id, **counts)
