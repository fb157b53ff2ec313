"""Local stand-ins for the services a distributed run needs, for tests and benchmarks: a noida-db Kafka
broker and a milvus-lite server (`milvus-lite server`, Milvus by URI), each a process group of its own."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def venv_tool(name: str) -> str | None:
    """A command installed beside this Python (the venv's, when it is not activated), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _start(command: list[str], port: int, log_file: Path) -> subprocess.Popen:
    with log_file.open("a") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # launchers run the service as a child: stop the whole group
        )
    try:
        wait_for_port(port)
    except TimeoutError:
        stop_service(proc)
        raise
    return proc


def start_noida(port: int, data_dir: Path) -> subprocess.Popen:
    """A noida-db Kafka broker on 127.0.0.1:port, persisting to data_dir; returns once it listens."""
    exe = venv_tool("noida-db")
    if exe is None:
        raise FileNotFoundError("no noida-db: install the dev extras, or name a broker")
    command = [exe, "start", "--only", "kafka", "--kafka-port", str(port), "--host", "127.0.0.1"]
    return _start([*command, "--data-dir", str(data_dir)], port, data_dir / "broker.log")


def start_milvus_server(port: int, data_dir: Path) -> subprocess.Popen:
    """`milvus-lite server` on 127.0.0.1:port over data_dir (Milvus by URI: http://127.0.0.1:port)."""
    exe = venv_tool("milvus-lite")
    if exe is None:
        raise FileNotFoundError("no milvus-lite command: install the project")
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [exe, "server", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)]
    return _start(command, port, data_dir.parent / f"{data_dir.name}.log")


def stop_service(proc: subprocess.Popen) -> None:
    """Stop a service started here (its whole process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
