"""`pgr user` (accounts, password on stdin) and `pgr serve` (a real server process on loopback)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

from conftest import free_port, operator_config, wait_for_port

from pgr.app.cli import main
from pgr.settings import load_settings


def test_user_accounts_from_the_command_line(tmp_path, monkeypatch, capsys):
    cfg = operator_config(tmp_path)
    users = load_settings(cfg, check_models=False).users_file
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long password\n"))
    assert main(["user", "alice", "--role", "admin", "--config", str(cfg)]) == 0
    stored = json.loads(users.read_text())
    assert stored["alice"]["role"] == "admin" and stored["alice"]["hash"].startswith("$argon2id$")
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["user", "bob", "--config", str(cfg)]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long password\n"))
    assert main(["user", "../bob", "--config", str(cfg)]) == 2
    assert "bad account name" in capsys.readouterr().err
    assert main(["user", "alice", "--delete", "--config", str(cfg)]) == 0
    assert json.loads(users.read_text()) == {}


def test_serve_listens_on_loopback_and_refuses_anonymous_calls(tmp_path):
    port = free_port()
    cfg = operator_config(tmp_path, port=port, retention_days=None)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgr.app.cli", "serve", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_for_port(port, timeout_s=120)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as page:
            assert page.status == 200 and b"Log in" in page.read()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status")
            raise AssertionError("anonymous status answered")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
        if listening.returncode == 0:  # iproute2 present: the socket is bound to loopback only
            local = [line.split()[3] for line in listening.stdout.splitlines()]
            assert local == [f"127.0.0.1:{port}"], listening.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert f"search page: http://127.0.0.1:{port}/" in out
    assert "no accounts in" in out  # the operator is told how to add one


def _serve(cfg, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgr.app.cli", "serve", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_for_port(port, timeout_s=120)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)


def _status(port: int, token: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_session_survives_a_restart_of_the_server_until_the_account_changes(tmp_path, monkeypatch):
    port = free_port()
    cfg = operator_config(tmp_path, port=port, retention_days=None)
    settings = load_settings(cfg, check_models=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long password\n"))
    assert main(["user", "vera", "--config", str(cfg)]) == 0
    proc = _serve(cfg, port)
    try:
        form = urllib.parse.urlencode({"username": "vera", "password": "a long password"}).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/login", data=form) as r:
            token = json.loads(r.read())["token"]
        assert _status(port, token) == 200
    finally:
        _stop(proc)
    assert token not in settings.sessions_file.read_bytes().decode("latin-1")  # only its hash is kept
    assert oct(settings.sessions_file.stat().st_mode & 0o777) == "0o600"

    proc = _serve(cfg, port)
    try:
        assert _status(port, token) == 200  # the restarted server knows the session
        assert _status(port, token + "x") == 401
        monkeypatch.setattr(sys, "stdin", io.StringIO("another long password\n"))
        assert main(["user", "vera", "--config", str(cfg)]) == 0  # a new password ends its sessions
        assert _status(port, token) == 401
    finally:
        _stop(proc)
