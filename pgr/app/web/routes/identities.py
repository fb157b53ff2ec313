"""Global identities (issue 12): their timelines, once identities are built."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from pgr.app.web.auth import CurrentUser

router = APIRouter(tags=["identities"])


@router.get("/identities/{identity_id}/timeline", status_code=200)
def timeline(identity_id: str, user: CurrentUser) -> dict:
    """Where and when one global identity was seen. 501 until global identities land (issue 12)."""
    raise HTTPException(
        status.HTTP_501_NOT_IMPLEMENTED, "global identities are not built yet (issue 12): no timelines"
    )
