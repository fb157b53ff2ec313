"""A broker that goes away mid-stream and comes back: nothing is lost, nothing is indexed twice.

This test restarts its own noida-db broker (persisting to disk), so it needs noida-db even where
PGR_KAFKA_BOOTSTRAP names another broker.
"""

from __future__ import annotations

import re

import pytest

from pgr.app.local_stack import free_port, restart_noida_kafka, start_noida, stop_noida, topic_records
from pgr.messages import decode_crop
from pgr.settings import load_settings
from tests.test_kafka_pipeline import Service, index_count, wait_drained

pytestmark = pytest.mark.kafka


def test_pipeline_survives_a_broker_restart(write_config, pets_video, tmp_path, monkeypatch):
    port, data = free_port(), tmp_path / "broker"
    data.mkdir()
    broker = start_noida(port, data)
    bootstrap = f"127.0.0.1:{port}"
    config = write_config(
        transport={
            "kind": "kafka",
            "bootstrap": bootstrap,
            "group_prefix": "${PGR_GROUP_PREFIX}",
            "instance_id": "${PGR_INSTANCE_ID:-}",
        },
        # paced like a live camera, so the outage falls in the middle of the stream
        cameras=[{"id": "pets", "source": str(pets_video), "fps": 2, "max_frames": 200, "realtime": True}],
        metrics={"port": "${PGR_METRICS_PORT:-0}"},
    )
    monkeypatch.setenv("PGR_GROUP_PREFIX", "outage")
    settings = load_settings(config)
    try:
        matcher = Service("matcher", config, tmp_path, "outage")
        reid = Service("reid", config, tmp_path, "outage")
        ingest = Service("ingest", config, tmp_path, "outage")
        matcher.wait_metric("pgr_records_indexed_total", 1)
        # stopped the way noida-db saves its data: one killed by a signal may lose records it had
        # acknowledged (the broker's own durability, not the pipeline's; Apache Kafka flushes on SIGTERM)
        restart_noida_kafka(data, port, down_s=4)
        assert ingest.proc.wait(timeout=240) == 0, ingest.log.read_text()[-3000:]
        published = int(re.search(r"camera pets: finished, (\d+) crops", ingest.log.read_text()).group(1))
        wait_drained(reid, bootstrap, "outage-reid", settings.topics.crops, timeout_s=180)
        wait_drained(matcher, bootstrap, "outage-matcher", settings.topics.features, timeout_s=180)
        assert matcher.stop() == 0 and reid.stop() == 0
        ids = {decode_crop(c).detection.detection_id for c in topic_records(bootstrap, settings.topics.crops)}
        assert len(ids) == published
        assert index_count(settings) == published
    finally:
        stop_noida(broker)
