"""Accounts, sessions and the authentication dependencies every route declares.

Accounts live in a JSON file (`pgr user NAME --role admin|viewer`, password on stdin) with Argon2id hashes.
A login gives a random session token, as an HttpOnly SameSite=Strict cookie for the page and in the
response body for API clients (`Authorization: Bearer TOKEN`). A request that changes something (POST,
DELETE) authenticated by the cookie must also carry the session's CSRF token in `X-CSRF-Token`: another
site can make a browser send the cookie, never read the token. Sessions are kept in `serve.sessions_file`
(SQLite; token hashes only), so a restarted server keeps everyone logged in; `pgr user NAME --delete` or a
role change logs that account out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request, status

from pgr.files import write_atomically

Role = Literal["admin", "viewer"]
COOKIE = "pgr_session"
CSRF_HEADER = "X-CSRF-Token"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
MIN_PASSWORD = 8


@dataclass(frozen=True)
class User:
    """Who is calling: the account name and its role."""

    name: str
    role: Role


@dataclass
class Session:
    user: User
    csrf: str
    expires: float


class UserStore:
    """Accounts in a JSON file: {name: {"hash": argon2id, "role": admin|viewer}}."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.hasher = PasswordHasher()
        self._lock = threading.Lock()
        # verifying an unknown name costs as much as a known one: the timing does not tell names apart
        self._dummy = self.hasher.hash(secrets.token_hex(16))

    def _read(self) -> dict[str, dict[str, str]]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _write(self, users: dict[str, dict[str, str]]) -> None:
        text = json.dumps(users, indent=1, sort_keys=True)
        write_atomically(self.path, lambda tmp: (tmp.write_text(text), os.chmod(tmp, 0o600)))

    def set(self, name: str, password: str, role: Role) -> None:
        """Add an account or change its password and role."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad account name {name!r}: want 1-64 of A-Z a-z 0-9 _ . @ -")
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")
        if role not in ("admin", "viewer"):
            raise ValueError(f"role must be admin or viewer, got {role!r}")
        with self._lock:
            users = self._read()
            users[name] = {"hash": self.hasher.hash(password), "role": role}
            self._write(users)

    def delete(self, name: str) -> None:
        with self._lock:
            users = self._read()
            if users.pop(name, None) is None:
                raise ValueError(f"no account {name!r}")
            self._write(users)

    def verify(self, name: str, password: str) -> User | None:
        """The account when the password is right, else None."""
        entry = self._read().get(name)
        try:
            self.hasher.verify(entry["hash"] if entry else self._dummy, password)
        except (VerificationError, InvalidHashError):
            return None
        return User(name, entry["role"]) if entry else None

    def count(self) -> int:
        return len(self._read())


class Sessions:
    """Logged-in sessions by token, each with its CSRF token and expiry, in a SQLite file: a restarted
    server keeps them. The file holds each token's SHA-256, never the token (reading it logs no one in)."""

    def __init__(self, hours: float, path: Path | str = ":memory:") -> None:
        self.seconds = hours * 3600
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        if str(path) != ":memory:":
            os.chmod(path, 0o600)
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS sessions (token TEXT PRIMARY KEY, user TEXT NOT NULL, "
            "role TEXT NOT NULL, csrf TEXT NOT NULL, expires REAL NOT NULL)"
        )
        self._lock = threading.Lock()

    def start(self, user: User) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), time.time() + self.seconds)
        with self._lock, self.db:
            self.db.execute("DELETE FROM sessions WHERE expires <= ?", (time.time(),))
            self.db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                (_digest(token), user.name, user.role, session.csrf, session.expires),
            )
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            row = self.db.execute(
                "SELECT user, role, csrf, expires FROM sessions WHERE token = ?", (_digest(token),)
            ).fetchone()
        if row is None or row[3] <= time.time():
            return None
        return Session(User(row[0], row[1]), row[2], row[3])

    def end(self, token: str | None) -> None:
        with self._lock, self.db:
            self.db.execute("DELETE FROM sessions WHERE token = ?", (_digest(token or ""),))

    def end_user(self, name: str) -> int:
        """Log one account out everywhere (its account was removed or its role changed); returns how many."""
        with self._lock, self.db:
            return self.db.execute("DELETE FROM sessions WHERE user = ?", (name,)).rowcount

    def close(self) -> None:
        self.db.close()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LoginThrottle:
    """At most `attempts` failed logins per account name in `window_s`: guessing passwords is slow."""

    def __init__(self, attempts: int = 5, window_s: float = 300.0) -> None:
        self.attempts, self.window_s = attempts, window_s
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, name: str, now: float) -> list[float]:
        recent = [t for t in self._failures.get(name, []) if now - t < self.window_s]
        self._failures[name] = recent
        return recent

    def wait_s(self, name: str) -> float:
        """Seconds until this name may try again (0: now)."""
        now = time.time()
        with self._lock:
            recent = self._recent(name, now)
            return 0.0 if len(recent) < self.attempts else recent[0] + self.window_s - now

    def failed(self, name: str) -> None:
        with self._lock:
            self._recent(name, time.time()).append(time.time())

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def session_token(request: Request) -> str | None:
    """The caller's session token: the bearer token, else the cookie."""
    return _bearer(request) or request.cookies.get(COOKIE)


def current_user(request: Request) -> User:
    """The logged-in caller (401 otherwise); a cookie-authenticated change must carry the CSRF token (403)."""
    sessions: Sessions = request.app.state.pgr.sessions
    bearer = _bearer(request)
    session = sessions.get(bearer or request.cookies.get(COOKIE))
    if session is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "log in first", headers={"WWW-Authenticate": "Bearer"}
        )
    if bearer is None and request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not secrets.compare_digest(sent.encode(), session.csrf.encode()):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"missing or wrong {CSRF_HEADER} header")
    return session.user


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    """The caller, who must have the admin role (403 otherwise)."""
    if user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs the admin role")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]
