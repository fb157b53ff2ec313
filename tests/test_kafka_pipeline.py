"""The three stages as three processes over a real Kafka-protocol broker, with a milvus-lite file.

One scenario, in order: ingest a real video (plus a camera that cannot be opened), index everything,
dead-letter malformed records while valid ones keep flowing, then restart the matcher twice (a clean
restart with full redelivery, and a SIGKILL mid-stream) and check that the index loses and duplicates nothing.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from matcher.open_index import open_index
from matcher.search import search_image
from pgr.app.local_stack import StageProcess, group_lag, topic_records
from pgr.app.pipeline import build_extractor
from pgr.messages import decode_crop, encode_crop
from pgr.settings import load_settings
from tests.test_embedded_pipeline import assert_own_track_first, own_track_query

pytestmark = pytest.mark.kafka


class Service(StageProcess):
    """A `pgr run STAGE` process with its own metrics port, consumer group prefix and static member id."""

    started: list[Service] = []

    def __init__(self, stage: str, config: Path, log_dir: Path, group: str) -> None:
        env = {"PGR_GROUP_PREFIX": group, "PGR_INSTANCE_ID": f"{stage}-{group}"}
        super().__init__(stage, config, log_dir / f"{stage}-{group}-{time.monotonic_ns()}.log", env)
        Service.started.append(self)


@pytest.fixture(autouse=True)
def _no_stray_services():
    """A failed test leaves no service running."""
    yield
    for service in Service.started:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait()
    Service.started.clear()


def wait_drained(service: Service, bootstrap: str, group: str, topic: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while group_lag(bootstrap, group, topic) > 0:
        assert service.proc.poll() is None, service.log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{group} still lags on {topic}"
        time.sleep(0.5)


def index_count(settings) -> int:
    index = open_index(settings.matcher)
    try:
        return index.count()
    finally:
        index.close()


def test_three_processes_over_kafka(kafka_bootstrap, write_config, pets_video, tmp_path):
    config = write_config(
        transport={
            "kind": "kafka",
            "bootstrap": kafka_bootstrap,
            "group_prefix": "${PGR_GROUP_PREFIX}",
            "instance_id": "${PGR_INSTANCE_ID:-}",
        },
        cameras=[
            {"id": "pets", "source": str(pets_video), "fps": 2, "max_frames": 300, "start_time": 1000.0},
            {"id": "broken", "source": "rtsp://127.0.0.1:9/nothing-here", "fps": 2},
        ],
        metrics={"port": "${PGR_METRICS_PORT}"},
        matcher={"batch_size": 8},  # small batches, so the SIGKILL below is likely to land mid-stream
    )
    os.environ["PGR_GROUP_PREFIX"], os.environ["PGR_METRICS_PORT"] = "check", "0"
    settings = load_settings(config)
    topics = settings.topics

    reid = Service("reid", config, tmp_path, "g1")
    matcher = Service("matcher", config, tmp_path, "g1")
    ingest = Service("ingest", config, tmp_path, "g1")
    assert ingest.proc.wait(timeout=300) == 0, ingest.log.read_text()[-3000:]
    log = ingest.log.read_text()
    assert "camera broken: giving up after 3 attempts" in log, "the broken camera was retried, then given up"

    crops = topic_records(kafka_bootstrap, topics.crops)
    n = len(crops)
    assert n >= 20
    assert {decode_crop(c).detection.camera_id for c in crops} == {"pets"}
    matcher.wait_metric("pgr_records_indexed_total", n)

    # Malformed records are dead-lettered; a valid record sent after them is still indexed.
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(topics.crops, b"\x00not a record")
    producer.send(topics.features, b'{"kind": "pgr.feature", "version": 1}')
    extra = decode_crop(crops[0])
    moved = type(extra.detection)(**{**extra.detection.__dict__, "detection_id": "pets:late:1"})
    producer.send(topics.crops, encode_crop(type(extra)(moved, extra.jpeg)))
    producer.flush()
    reid.wait_metric("pgr_dead_lettered_total", 1, (("stage", "reid"),))
    matcher.wait_metric("pgr_dead_lettered_total", 1, (("stage", "matcher"),))
    matcher.wait_metric("pgr_records_indexed_total", n + 1)
    dead = [json.loads(r) for r in topic_records(kafka_bootstrap, topics.dead_letter)]
    assert sorted(d["stage"] for d in dead) == ["matcher", "reid"]
    assert {d["source_topic"] for d in dead} == {topics.crops, topics.features}
    assert reid.stop() == 0 and matcher.stop() == 0
    assert index_count(settings) == n + 1

    # A crop from the index, searched for, finds its own track first.
    index = open_index(settings.matcher)
    track, _, query = own_track_query(index)
    hits = search_image(index, build_extractor(settings.reid), Path(query.thumbnail), top_k=5)
    assert_own_track_first(hits, query, track)
    index.close()

    # A restarted matcher in a fresh group gets every record again: nothing is duplicated.
    again = Service("matcher", config, tmp_path, "g2")
    again.wait_metric("pgr_records_indexed_total", n + 1)
    assert again.stop() == 0
    assert index_count(settings) == n + 1

    # Killed mid-stream, a matcher commits nothing it has not written; its successor (same static member
    # id, so it takes the partitions over at once) finishes the job.
    killed = Service("matcher", config, tmp_path, "g3")
    killed.wait_metric("pgr_records_indexed_total", 1)
    killed.stop(signal.SIGKILL)
    successor = Service("matcher", config, tmp_path, "g3")
    successor.wait_ready()
    wait_drained(successor, kafka_bootstrap, "g3-matcher", topics.features)
    assert successor.stop() == 0
    assert index_count(settings) == n + 1
