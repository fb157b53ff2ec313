"""Logging in and out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, Response, status

from pgr.app.web.auth import COOKIE, CurrentUser, session_token
from pgr.app.web.schemas import LoginResult, Me

router = APIRouter(tags=["login"])


@router.post("/login", response_model=LoginResult)
def login(
    request: Request,
    response: Response,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
) -> LoginResult:
    """Check the password; start a session (cookie and bearer token). Failures are audited."""
    state = request.app.state.pgr
    client = request.client.host if request.client else None
    wait = state.throttle.wait_s(username)
    if wait > 0:
        state.audit.append(username, "login_refused", client=client, reason="too many failed logins")
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many failed logins for {username!r}: try again in {int(wait) + 1} s",
            headers={"Retry-After": str(int(wait) + 1)},
        )
    user = state.users.verify(username, password)
    if user is None:
        state.throttle.failed(username)
        state.audit.append(username, "login_failed", client=client)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user name or password")
    state.throttle.succeeded(username)
    token, session = state.sessions.start(user)
    state.audit.append(user.name, "login", client=client)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(state.sessions.seconds),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return LoginResult(
        user=user.name, role=user.role, csrf_token=session.csrf, token=token, expires=session.expires
    )


@router.post("/logout", status_code=204)
def logout(request: Request, response: Response, user: CurrentUser) -> None:
    """End this session."""
    request.app.state.pgr.sessions.end(session_token(request))
    response.delete_cookie(COOKIE, path="/")


@router.get("/me", response_model=Me)
def me(request: Request, user: CurrentUser) -> Me:
    """Who is logged in (the page calls it at load to pick up its session)."""
    session = request.app.state.pgr.sessions.get(session_token(request))
    return Me(user=user.name, role=user.role, csrf_token=session.csrf if session else None)
