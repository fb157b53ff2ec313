"""transport.delete_consumed on a real Kafka-protocol broker: a stage deletes the records every consumer
group has committed, never one a group with offsets on the partition has still to read; a broker that is
away is logged and tried again, and the stage goes on."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

from pgr.app.local_stack import first_offset, free_port, start_noida, stop_noida
from pgr.consumed_deletion import ConsumedDeleter
from pgr.metrics import PipelineMetrics
from pgr.transport import KafkaTransport

pytestmark = pytest.mark.kafka


def _read(consumer, n: int) -> list[int]:
    """Poll until `n` records came (offsets), then commit them."""
    offsets: list[int] = []
    deadline = time.monotonic() + 60
    while len(offsets) < n and time.monotonic() < deadline:
        offsets += [m.offset for m in consumer.poll(max_records=n - len(offsets), timeout_s=1.0)]
    assert len(offsets) == n, f"read {len(offsets)} of {n}"
    consumer.commit()
    return offsets


def _topic_with_two_groups(bootstrap: str, records: int = 50):
    topic, run = f"del{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:6]
    transport = KafkaTransport(bootstrap, partitions=1, instance_id=f"del-{run}", connect_timeout_s=5)
    producer = transport.producer()
    for i in range(records):
        producer.send(topic, str(i).encode())
    producer.flush()
    producer.close()
    fast = transport.consumer([topic], f"fast-{run}")
    slow = transport.consumer([topic], f"slow-{run}")
    return topic, fast, slow


def test_only_what_every_group_has_committed_is_deleted(kafka_bootstrap):
    topic, fast, slow = _topic_with_two_groups(kafka_bootstrap)
    try:
        assert _read(fast, 30) == list(range(30))
        assert _read(slow, 10) == list(range(10))
        assert fast.delete_committed({topic}) == {(topic, 0): 10}  # the slow group's 10, not the fast's 30
        assert first_offset(kafka_bootstrap, topic) == 10
        assert fast.delete_committed({topic}) == {}  # nothing new committed: no request for nothing
        assert fast.delete_committed({"another-topic"}) == {}  # only the topics named

        assert _read(slow, 25) == list(range(10, 35))  # the slow group lost nothing it had to read
        assert slow.delete_committed({topic}) == {(topic, 0): 20}  # now the fast group's 30 holds it back
        assert first_offset(kafka_bootstrap, topic) == 30
        assert _read(fast, 20) == list(range(30, 50))
    finally:
        fast.close()
        slow.close()


def test_the_deleter_counts_what_went_and_asks_at_most_every_interval(kafka_bootstrap):
    topic, fast, slow = _topic_with_two_groups(kafka_bootstrap, records=20)
    metrics = PipelineMetrics()
    deleter = ConsumedDeleter(metrics, "reid", [topic], interval_s=60)
    try:
        _read(fast, 12)
        _read(slow, 20)
        deleter.update(fast)
        assert metrics.records_deleted.labels("reid", topic)._value.get() == 12
        _read(fast, 8)
        deleter.update(fast)  # within the interval: nothing asked, nothing deleted
        assert first_offset(kafka_bootstrap, topic) == 12
        deleter.interval_s = 0
        deleter.update(fast)
        assert first_offset(kafka_bootstrap, topic) == 20
        assert metrics.records_deleted.labels("reid", topic)._value.get() == 20
    finally:
        fast.close()
        slow.close()


def test_a_broker_that_is_away_is_logged_and_deletion_resumes_when_it_is_back(tmp_path, caplog):
    port, data = free_port(), tmp_path / "broker"
    data.mkdir()
    broker = start_noida(port, data)
    bootstrap = f"127.0.0.1:{port}"
    topic, fast, slow = _topic_with_two_groups(bootstrap, records=10)
    metrics = PipelineMetrics()
    deleter = ConsumedDeleter(metrics, "matcher", [topic], interval_s=0)
    deleted = metrics.records_deleted.labels("matcher", topic)._value
    try:
        _read(fast, 10)
        deleter.update(fast)  # the slow group has committed nothing yet: it holds nothing back
        assert deleted.get() == 10 and first_offset(bootstrap, topic) == 10
        producer = KafkaTransport(bootstrap).producer()
        for i in range(10, 20):
            producer.send(topic, str(i).encode())
        producer.flush()
        producer.close()
        assert _read(slow, 6) == list(range(10, 16))
        assert _read(fast, 10) == list(range(10, 20))
        stop_noida(broker)
        with caplog.at_level(logging.WARNING, logger="pgr.consumed_deletion"):
            deleter.update(fast)  # must not raise: the stage goes on
        assert "deleting consumed records failed" in caplog.text and deleted.get() == 10
        broker = start_noida(port, data)
        deadline = time.monotonic() + 60
        while deleted.get() < 16:
            assert time.monotonic() < deadline, "no deletion after the broker came back"
            deleter.update(fast)
            time.sleep(0.5)
        assert deleted.get() == 16 and first_offset(bootstrap, topic) == 16
    finally:
        fast.close()
        slow.close()
        stop_noida(broker)
