"""Static group membership by default: a worker killed with SIGKILL is replaced by its successor at once, with
or without PGR_INSTANCE_ID (the CI broker never drops a dynamic member that died)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from kafka import KafkaProducer

pytestmark = pytest.mark.kafka

CONSUMER = """
import sys, time
from pgr.transport import KafkaTransport
bootstrap, topic, group, instance = sys.argv[1:5]
consumer = KafkaTransport(bootstrap, instance_id=instance or None).consumer([topic], group)
print("id", getattr(consumer, "instance_id", None), flush=True)
while True:
    batch = consumer.poll(max_records=1, timeout_s=0.5)
    for m in batch:
        print("got", m.value.decode(), flush=True)
    if batch:
        consumer.commit()
"""
WHO = (
    "import sys; from pgr.membership import static_instance_id; print(static_instance_id(sys.argv[1], None))"
)


def _start(*args: str, lock_dir) -> subprocess.Popen:
    env = {**os.environ, "PGR_MEMBER_LOCKS": str(lock_dir)}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True, env=env)


def _derived_id(lock_dir) -> str:
    """The id a fresh worker process on this host derives (no PGR_INSTANCE_ID)."""
    env = {**os.environ, "PGR_MEMBER_LOCKS": str(lock_dir)}
    out = subprocess.run(
        [sys.executable, "-c", WHO, "g"], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip()


def test_default_ids_are_stable_per_host_and_distinct_per_process(tmp_path):
    from pgr.membership import static_instance_id

    assert static_instance_id("g", "explicit-id") == "explicit-id"
    holder = _start("-c", WHO + "; import time; time.sleep(120)", "g", lock_dir=tmp_path)
    holder_id = holder.stdout.readline().strip()
    try:
        assert _derived_id(tmp_path) != holder_id  # two workers on one host never share an id
    finally:
        holder.kill()
        holder.wait()
    assert _derived_id(tmp_path) == holder_id  # a restarted worker takes the id of the one that died
    assert holder_id.endswith("-0") and holder_id.startswith(os.uname().nodename[:40])


@pytest.mark.parametrize("explicit", [False, True], ids=["derived id", "PGR_INSTANCE_ID"])
def test_a_killed_worker_is_replaced_at_once(kafka_bootstrap, tmp_path, explicit):
    topic, group = f"sm{uuid.uuid4().hex[:8]}", f"g{uuid.uuid4().hex[:8]}"
    instance = f"w-{group}" if explicit else ""
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    first = _start("-c", CONSUMER, kafka_bootstrap, topic, group, instance, lock_dir=tmp_path)
    try:
        assert first.stdout.readline().startswith("id ")
        producer.send(topic, b"one")
        producer.flush()
        assert first.stdout.readline().strip() == "got one"
        first.send_signal(signal.SIGKILL)
        first.wait()
        producer.send(topic, b"two")
        producer.flush()
        successor = _start("-c", CONSUMER, kafka_bootstrap, topic, group, instance, lock_dir=tmp_path)
        t0 = time.monotonic()
        try:
            assert successor.stdout.readline().startswith("id ")
            lines = [_readline(successor, timeout_s=60)]
            if lines[0] == "got one":  # killed before its commit landed: redelivered (at least once)
                lines.append(_readline(successor, timeout_s=10))
            took = time.monotonic() - t0
            print(f"successor got the new record {took:.1f}s after it started")
            assert lines[-1] == "got two", "the successor never got the partitions of the killed worker"
            assert took < 30
        finally:
            successor.kill()
            successor.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        producer.close()


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout_s):
        return ""
    return proc.stdout.readline().strip()
