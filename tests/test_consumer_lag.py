"""Consumer lag (pgr_consumer_lag{stage,topic,partition}): the topic's end offset minus the group's committed
offset, per partition the consumer owns, on the in-process bus and on a real Kafka-protocol broker."""

from __future__ import annotations

import time
import uuid

import pytest

from pgr.app.local_stack import group_lag, scrape
from pgr.consume_loop import LagReporter
from pgr.metrics import PipelineMetrics
from pgr.transport import InProcessBus, KafkaTransport


def exported(metrics: PipelineMetrics) -> dict[tuple[str, str, str], float]:
    port = metrics.serve("127.0.0.1", 0)
    return {
        (d["stage"], d["topic"], d["partition"]): v
        for (name, labels), v in scrape(port).items()
        if name == "pgr_consumer_lag" and (d := dict(labels))
    }


def test_lag_on_the_bus_is_what_the_group_has_not_committed():
    bus, metrics = InProcessBus(), PipelineMetrics()
    producer = bus.producer()
    consumer = bus.consumer(["crops"], "reid")
    for i in range(5):
        producer.send("crops", str(i).encode())
    assert len(consumer.poll(max_records=2, timeout_s=1)) == 2
    lag = LagReporter(metrics, "reid", interval_s=0)
    lag.update(consumer)
    assert exported(metrics) == {("reid", "crops", "0"): 5}  # polled, not committed
    consumer.commit()
    lag.update(consumer)
    assert metrics.consumer_lag.labels("reid", "crops", "0")._value.get() == 3


@pytest.mark.kafka
def test_lag_on_kafka_per_partition(kafka_bootstrap):
    topic, group = f"lag{uuid.uuid4().hex[:8]}", f"g{uuid.uuid4().hex[:8]}"
    transport = KafkaTransport(kafka_bootstrap, partitions=2, instance_id=f"lag-{group}")
    consumer = transport.consumer([topic], group)
    producer = transport.producer()
    for i in range(10):
        producer.send(topic, b"x", key=str(i % 2).encode())
    producer.flush()
    metrics = PipelineMetrics()
    lag = LagReporter(metrics, "reid", interval_s=0)
    got, deadline = [], time.monotonic() + 60
    while len(got) < 4:
        assert time.monotonic() < deadline, "the consumer got no records"
        got += consumer.poll(max_records=4 - len(got), timeout_s=2)
    consumer.commit()
    lag.update(consumer)
    per_partition = exported(metrics)
    assert set(per_partition) == {("reid", topic, "0"), ("reid", topic, "1")}
    assert sum(per_partition.values()) == 6 == group_lag(kafka_bootstrap, group, topic)
    while sum(consumer.lag().values()):
        assert time.monotonic() < deadline, "the consumer never caught up"
        if consumer.poll(max_records=10, timeout_s=2):
            consumer.commit()
    lag.update(consumer)
    assert sum(exported(metrics).values()) == 0
    producer.close()
    consumer.close()
