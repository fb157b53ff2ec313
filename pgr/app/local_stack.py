"""The deployment's parts on one machine, as processes: a noida-db Kafka broker, a milvus-lite server and
`pgr run STAGE` services, with what reads their topics and metrics. The fault drill runs on them, and so
do the tests that need real processes (tests/ imports them from here)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pgr.paths import REPO


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc); OSError when it cannot be read."""
    return _stat_cpu_s(_stat_fields(Path(f"/proc/{pid}/stat")))


def group_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process and, when it leads a process group, of the group's
    other processes (a broker started by start_noida: its launcher and the broker it runs); OSError when
    `pid` cannot be read."""
    total = process_cpu_s(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        if stat.parent.name == str(pid):
            continue
        try:
            fields = _stat_fields(stat)
        except OSError:
            continue  # a process that ended meanwhile
        if int(fields[2]) == pid:  # its process group
            total += _stat_cpu_s(fields)
    return total


def _stat_fields(stat: Path) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...)."""
    return stat.read_text().rsplit(")", 1)[1].split()


def _stat_cpu_s(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port nothing listens on now (on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    """Return once something listens on 127.0.0.1:port; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def _venv_tool(name: str) -> str | None:
    """A console script of this Python's environment (found even when it is not activated), else PATH's."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def start_noida(port: int, data_dir: Path, timeout_s: float = 120.0) -> subprocess.Popen:
    """A noida-db Kafka broker on 127.0.0.1:port, persisting to data_dir; returns once it listens (a
    broker with much data takes a while to recover it)."""
    exe = _venv_tool("noida-db")
    if exe is None:
        raise RuntimeError("no broker: install the dev extras (noida-db) or name one (PGR_KAFKA_BOOTSTRAP)")
    with (data_dir / "broker.log").open("a") as log:
        proc = subprocess.Popen(
            [exe, "start", "--only", "kafka", "--kafka-port", str(port), "--host", "127.0.0.1"]
            + ["--data-dir", str(data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # noida-db's launcher runs the broker as a child: stop the whole group
        )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            wait_for_port(port, timeout_s=1.0)
            return proc
        except TimeoutError:
            if proc.poll() is not None:  # e.g. another broker still holds the data folder
                log = data_dir / "broker.log"
                raise RuntimeError(f"noida-db exited ({proc.returncode}): see {log}") from None
            if time.monotonic() > deadline:
                _stop_group(proc)
                raise


def stop_noida(proc: subprocess.Popen) -> None:
    """Stop a broker started by start_noida (its whole process group). Note: a noida-db stopped by a
    signal while producers write may lose records it had acknowledged; `restart_noida_kafka` does not."""
    _stop_group(proc)


def restart_noida_kafka(data_dir: Path, port: int, down_s: float) -> None:
    """Stop the Kafka service of the noida-db server over `data_dir` the way noida-db saves its data, keep it
    down for `down_s`, start it again on its port; returns once it listens."""
    exe = _venv_tool("noida-db")
    if exe is None:
        raise RuntimeError("noida-db is not installed")
    for command in ("stop", "start"):
        out = subprocess.run(
            [exe, command, "kafka", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=300
        )
        if out.returncode != 0:
            raise RuntimeError(f"noida-db {command} kafka failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        if command == "stop":
            time.sleep(down_s)
    wait_for_port(port, timeout_s=120)


class MilvusLiteServer:
    """`milvus-lite server` on a loopback port over `data_dir`: an index several processes share by URI
    (and that survives the matcher). `kill` and `start` again to take it away and bring it back."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir, self.port = data_dir, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MilvusLiteServer:
        exe = _venv_tool("milvus-lite")
        if exe is None:
            raise RuntimeError("milvus-lite is not installed")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir.parent / f"milvus-{self.port}.log").open("a") as log:
            self.proc = subprocess.Popen(
                [exe, "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1"]
                + ["--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, timeout_s=60)
        return self

    def kill(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None


def _stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
    """Signal a process group and wait until every process of it is gone (a launcher may exit before the
    server it started has let go of its port and data); SIGKILL what is left after `timeout_s`."""
    for signum, wait_s in ((sig, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while _group_alive(proc) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _group_alive(proc):
            break
    proc.wait()


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the group leader, or it counts as alive
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def scrape(port: int, host: str = "127.0.0.1") -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page, keyed by (name, sorted labels)."""
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def metric_total(samples: dict[tuple[str, tuple], float], name: str) -> float:
    """The sum of a scraped sample over all its label values."""
    return sum(v for (n, _), v in samples.items() if n == name)


class StageProcess:
    """A `pgr run STAGE --config CONFIG` process (`pgr serve` for stage "serve"; `args`, when given, are the
    `pgr` arguments instead) started in the repository, with its own metrics port (PGR_METRICS_PORT; a free
    one unless `port` is given) and its output in `log`. `env` adds to (or overrides) this process'
    environment."""

    def __init__(
        self,
        stage: str,
        config: Path | None,
        log: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.stage, self.config, self.log, self.port = stage, config, log, port or free_port()
        env = {**os.environ, **(env or {}), "PGR_METRICS_PORT": str(self.port)}
        if args is None:
            args = ["serve"] if stage == "serve" else ["run", stage]
            args += ["--config", str(config)]
        with log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pgr.app.cli", *args],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text()[-chars:]

    def metric(self, name: str, labels: tuple = ()) -> float:
        """A sample of its /metrics (labels: sorted (name, value) pairs); -1 while it does not answer."""
        try:
            return scrape(self.port).get((name, labels), 0.0)
        except OSError:
            return -1.0

    def total(self, name: str) -> float:
        """A metric summed over its labels; -1 while the service does not answer."""
        try:
            return metric_total(scrape(self.port), name)
        except OSError:
            return -1.0

    def wait_metric(self, name: str, want: float, labels: tuple = (), timeout_s: float = 180) -> None:
        """Until the sample reaches `want`; AssertionError with the log's tail if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.stage} exited: {self.tail()}"
            if self.metric(name, labels) >= want:
                return
            time.sleep(0.5)
        raise AssertionError(f"{self.stage}: {name} never reached {want}: {self.tail()}")

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Until the service answers on its metrics port."""
        deadline = time.monotonic() + timeout_s
        while self.metric("pgr_records_indexed_total") < 0:
            assert self.proc.poll() is None, f"{self.stage} exited: {self.tail()}"
            assert time.monotonic() < deadline, f"{self.stage} not ready after {timeout_s}s: {self.tail()}"
            time.sleep(0.3)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        """Send `sig` and wait for the exit; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)

    def ensure_stopped(self, timeout_s: float = 30) -> None:
        """Stop it whatever state it is in: SIGTERM, then SIGKILL after `timeout_s`."""
        try:
            self.stop(timeout_s=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(signal.SIGKILL)


def topic_records(bootstrap: str, topic: str) -> list[bytes]:
    """Every record in a topic, read by a throwaway consumer."""
    return [m.value for m in topic_messages(bootstrap, topic)]


def first_offset(bootstrap: str, topic: str, partition: int = 0) -> int:
    """The first offset of a partition still on the broker: where a new reader starts."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, partition)
        return c.beginning_offsets([tp])[tp]
    finally:
        c.close()


def topic_messages(bootstrap: str, topic: str) -> list:
    """Every record in a topic (kafka-python ConsumerRecords: partition, offset, key, value, timestamp)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        parts = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or [])]
        if not parts:
            return []
        c.assign(parts)
        c.seek_to_beginning(*parts)
        end = c.end_offsets(parts)
        out = []
        while any(c.position(p) < end[p] for p in parts):
            for msgs in c.poll(timeout_ms=1000).values():
                out.extend(msgs)
        return out
    finally:
        c.close()


def group_lag(bootstrap: str, group: str, topic: str) -> int:
    """Records in `topic` that `group` has not committed."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or []]
        end = c.end_offsets(parts)
        return sum(end[p] - (c.committed(p) or 0) for p in parts)
    finally:
        c.close(autocommit=False)
