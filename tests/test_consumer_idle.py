"""A Kafka consumer with nothing to read sleeps instead of spinning, and still gets what arrives at once; a
batch is read in full batches. On a real Kafka-protocol broker: noida-db answers an empty fetch at once,
and kafka-python's own wait then re-sent fetches at a full core for as long as the consumer waited."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from pgr.transport import KafkaTransport

pytestmark = pytest.mark.kafka


def _consumer(bootstrap: str):
    topic, group = f"idle{uuid.uuid4().hex[:8]}", f"g{uuid.uuid4().hex[:8]}"
    transport = KafkaTransport(bootstrap, partitions=2, instance_id=f"idle-{group}")
    consumer = transport.consumer([topic], group)
    producer = transport.producer()
    producer.send(topic, b"first")
    producer.flush()
    deadline = time.monotonic() + 30
    while not (got := consumer.poll(max_records=10, timeout_s=1.0)) and time.monotonic() < deadline:
        pass  # the group is joined once the first record comes
    assert [m.value for m in got] == [b"first"]
    return topic, consumer, producer


def test_a_consumer_waiting_on_an_empty_topic_uses_little_cpu(kafka_bootstrap):
    _, consumer, _ = _consumer(kafka_bootstrap)
    try:
        cpu0, wall0 = time.process_time(), time.monotonic()  # this process: every thread, kafka-python's too
        while time.monotonic() - wall0 < 3.0:
            assert consumer.poll(max_records=10, timeout_s=1.0) == []
        cpu = time.process_time() - cpu0
        assert cpu < 0.75, f"{cpu:.2f} s of CPU in 3 s of waiting"  # was about 3 s: a core, spinning
    finally:
        consumer.close()


def test_a_waiting_consumer_gets_a_record_soon_after_it_is_sent(kafka_bootstrap):
    topic, consumer, producer = _consumer(kafka_bootstrap)
    try:
        for i in range(5):
            sent_at: list[float] = []

            def send(value: bytes = str(i).encode(), sent_at: list[float] = sent_at) -> None:
                time.sleep(0.4)  # the consumer sleeps between empty polls by then
                producer.send(topic, value)
                producer.flush()
                sent_at.append(time.monotonic())

            sender = threading.Thread(target=send)
            sender.start()
            got = consumer.poll(max_records=10, timeout_s=5.0)
            got_at = time.monotonic()
            sender.join()
            assert [m.value for m in got] == [str(i).encode()]
            assert got_at - sent_at[0] < 0.5, got_at - sent_at[0]  # the longest sleep is 0.05 s
    finally:
        consumer.close()


def test_a_backlog_is_read_in_full_batches_without_rejoining(kafka_bootstrap):
    topic, consumer, producer = _consumer(kafka_bootstrap)
    try:
        for i in range(400):
            producer.send(topic, str(i).encode(), key=str(i % 2).encode())
        producer.flush()
        values: list[bytes] = []
        polls = 0
        deadline = time.monotonic() + 30
        while len(values) < 400 and time.monotonic() < deadline:
            values += [m.value for m in consumer.poll(max_records=16, timeout_s=1.0)]
            polls += 1
        assert sorted(values, key=int) == [str(i).encode() for i in range(400)]  # each once
        assert polls <= 400 // 16 + 4, polls  # full batches, not a trickle of re-fetched records
    finally:
        consumer.close()
