"""Poison records over a real Kafka-protocol broker: the re-ID worker and the matcher, wired as `pgr run`
wires them, dead-letter every poison with a reason, keep running, and index the valid records
sent after them."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid

import cv2
import numpy as np
import pytest
from kafka import KafkaProducer

from matcher.open_index import open_index
from pgr.app.local_stack import topic_records
from pgr.app.pipeline import build_transport, run_matcher_stage, run_reid_stage
from pgr.messages import CropRecord, FeatureRecord, encode_crop, encode_feature
from pgr.metrics import PipelineMetrics, counter_total
from pgr.settings import load_settings
from tests.test_poison_records import DET, nested

pytestmark = pytest.mark.kafka
IMAGENET_MODEL = "mobilenetv2-imagenet-gap"


def _crop(pets_video, **detection) -> CropRecord:
    frame = cv2.VideoCapture(str(pets_video)).read()[1]
    jpeg = cv2.imencode(".jpg", frame[100:228, 300:364])[1].tobytes()
    return CropRecord(type(DET)(**{**DET.__dict__, **detection}), jpeg)


def _raw(body: dict, **fields) -> bytes:
    body = {**body, **fields}
    return json.dumps(body, ensure_ascii=True).encode()


def _arr(a: np.ndarray) -> dict:
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def poisons(pets_video) -> tuple[list[bytes], list[bytes], bytes, bytes]:
    """Crop poisons, feature poisons, then one valid crop and one valid feature record."""
    crop = json.loads(encode_crop(_crop(pets_video)))
    unit = np.full(1280, 1 / np.sqrt(1280), np.float32)
    feature = json.loads(
        encode_feature(FeatureRecord(DET, IMAGENET_MODEL, unit, base64.b64decode(crop["jpeg"])))
    )
    deep = nested(100_000)
    crops = [
        _raw(crop, camera_id="c" * 100),  # longer than the index column: Milvus refused it
        _raw(crop, camera_id="cam\ud800"),  # the Kafka key could not be encoded
        _raw(crop, detection_id="cam1:" + "9" * 251),  # file name too long for the file system
        _raw(crop, timestamp=1e300),  # crashed `pgr search` for every query that returned it
        _raw(crop)[:-1] + b',"extra":' + deep.encode() + b"}",  # RecursionError
        b"\x00" * 900_000,  # as a dead letter (base64 in JSON) it was over the broker's size limit
    ]
    features = [
        _raw(feature)[:-1] + b',"extra2":' + deep.encode() + b"}",
        _raw(feature, instance={"dtype": "float32", "shape": [2**40, 2**40], "data": ""}),
        _raw(feature, camera_id="c" * 100),
        _raw(feature, model="m" * 129),
        _raw(feature, detection_id="cam1:\udfff"),
        _raw(feature, detection_id="cam1:" + "9" * 251),
        _raw(feature, instance=_arr(np.ones(3, np.float32))),  # fixed the index dimension at 3
        _raw(feature, model="another-model"),
        _raw(
            feature,
            parts=_arr(np.full((5, 1280), np.nan, np.float16)),
            part_visibility=_arr(np.ones(5, bool)),
        ),
        _raw(feature, instance=_arr(np.zeros(1280, np.float32))),
        b"\x00" * 900_000,
    ]
    valid_crop = encode_crop(_crop(pets_video, detection_id="cam1:1:t1"))
    valid_feature = _raw(feature, detection_id="cam1:2:t2")
    return crops, features, valid_crop, valid_feature


def test_each_poison_is_dead_lettered_and_the_valid_records_are_indexed(
    kafka_bootstrap, write_config, pets_video
):
    group = f"poison{uuid.uuid4().hex[:6]}"
    settings = load_settings(
        write_config(
            transport={"kind": "kafka", "bootstrap": kafka_bootstrap, "group_prefix": group},
            reid={"model": "imagenet-gap", "checkpoint": None},
        )
    )
    topics, metrics, stop = settings.topics, PipelineMetrics(), threading.Event()
    crops, features, valid_crop, valid_feature = poisons(pets_video)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for raw in crops:
        producer.send(topics.crops, raw)
    producer.send(topics.crops, valid_crop)
    for raw in features:
        producer.send(topics.features, raw)
    producer.send(topics.features, valid_feature)
    producer.flush()

    errors: list[BaseException] = []

    def run(stage) -> None:
        try:
            stage(settings, build_transport(settings), metrics, stop)
        except BaseException as exc:  # a worker that dies is what this test is about
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in (run_reid_stage, run_matcher_stage)]
    for t in threads:
        t.start()

    def dead(stage: str) -> float:
        return metrics.dead_lettered.labels(stage)._value.get()

    received_reid = len(crops) + 1
    received_matcher = len(features) + 1 + 1  # the valid crop's features arrive from the re-ID worker
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and not errors:
            reid_done = counter_total(metrics.features_extracted) + dead("reid") >= received_reid
            matcher_done = counter_total(metrics.records_indexed) + dead("matcher") >= received_matcher
            if reid_done and matcher_done:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, f"a worker died: {errors[0]!r}"
    assert dead("reid") == len(crops) and counter_total(metrics.features_extracted) == 1
    assert dead("matcher") == len(features) and counter_total(metrics.records_indexed) == 2
    letters = [json.loads(r) for r in topic_records(kafka_bootstrap, topics.dead_letter)]
    assert len(letters) == len(crops) + len(features)
    assert all(d["error"] and d["stage"] in {"reid", "matcher"} for d in letters)
    big = [d for d in letters if d["payload_bytes"] == 900_000]
    assert len(big) == 2 and all(d["payload_truncated"] for d in big)  # the whole is at its offset

    index = open_index(settings.matcher)
    try:
        assert index.dim == 1280
        assert sorted(index.all_ids()) == ["cam1:1:t1", "cam1:2:t2"]
    finally:
        index.close()
