"""`pgr user` (accounts, password on stdin) and `pgr serve` (a real server process on loopback)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
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
