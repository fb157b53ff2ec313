"""Global identities (the matcher's, matcher/identity_store.py): one identity's timeline across cameras."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from matcher.identity_store import IdentityStore, timeline
from pgr.app.web.auth import CurrentUser

router = APIRouter(tags=["identities"])


@router.get("/identities/{identity_id}/timeline", status_code=200)
def identity_timeline(identity_id: str, request: Request, user: CurrentUser) -> dict:
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
