"""The re-ID worker and the matcher on the in-process bus with the real CNN and a real milvus-lite file."""

from __future__ import annotations

import json
import threading

import cv2
import numpy as np
import pytest

from matcher.feature_store import FeatureStore
from matcher.index import DetectionIndex
from matcher.service import MatcherWorker
from matcher.thumbnails import ThumbnailStore
from pgr.consume_loop import consume_loop
from pgr.messages import CropRecord, Detection, decode_feature, encode_crop
from pgr.metrics import PipelineMetrics
from pgr.settings import load_settings
from pgr.transport import InProcessBus
from reid.extractor import ImageNetMobileNetV2Extractor
from reid.service import ReidWorker


@pytest.fixture(scope="module")
def crops(pets_video):
    """Real person-sized crops cut from a PETS frame."""
    cap = cv2.VideoCapture(str(pets_video))
    ok, frame = cap.read()
    assert ok
    out = []
    for i, x in enumerate(range(0, 400, 50)):
        det = Detection(f"c:0:d{i}", "c", 1.0, 0, -1, (x, 100.0, x + 40.0, 200.0), 0.8)
        jpeg = cv2.imencode(".jpg", frame[100:200, x : x + 40])[1].tobytes()
        out.append(CropRecord(det, jpeg))
    return out


def test_malformed_crop_is_dead_lettered_and_the_rest_flow(write_config, crops):
    settings = load_settings(write_config())
    bus, metrics = InProcessBus(), PipelineMetrics()
    producer = bus.producer()
    producer.send("crops", encode_crop(crops[0]))
    producer.send("crops", b"garbage")
    producer.send("crops", encode_crop(crops[1]))
    extractor = ImageNetMobileNetV2Extractor(settings.reid.weights, "cpu")
    worker = ReidWorker(extractor, producer, "features", "dlq", metrics)
    done = threading.Event()
    done.set()
    consume_loop(bus.consumer(["crops"], "reid"), worker.handle, threading.Event(), done)
    feats = [decode_feature(m.value) for m in bus.records("features")]
    assert [f.detection.detection_id for f in feats] == ["c:0:d0", "c:0:d1"]
    assert all(f.instance.shape == (1280,) and abs(np.linalg.norm(f.instance) - 1) < 1e-4 for f in feats)
    (dead,) = [json.loads(m.value) for m in bus.records("dlq")]
    assert dead["stage"] == "reid" and dead["offset"] == 1 and "not JSON" in dead["error"]
    assert bus.lag("crops", "reid") == 0


def test_uncommitted_records_are_redelivered_and_indexed_once(write_config, crops, tmp_path):
    settings = load_settings(write_config())
    bus, metrics = InProcessBus(), PipelineMetrics()
    producer = bus.producer()
    for c in crops:
        producer.send("crops", encode_crop(c))
    extractor = ImageNetMobileNetV2Extractor(settings.reid.weights, "cpu")
    done = threading.Event()
    done.set()
    reid = ReidWorker(extractor, producer, "features", "dlq", metrics)
    consume_loop(bus.consumer(["crops"], "reid"), reid.handle, threading.Event(), done)

    uri = str(tmp_path / "idx.db")
    index = DetectionIndex(uri, dim=1280)
    matcher = MatcherWorker(
        index, ThumbnailStore(tmp_path / "t"), FeatureStore(tmp_path / "f"), producer, "dlq", metrics
    )
    first = bus.consumer(["features"], "matcher")
    matcher.handle(first.poll(max_records=5, timeout_s=1))  # written, but the "crash" comes before commit
    assert index.count() == 5
    index.close()

    index = DetectionIndex(uri)  # a restarted matcher reopens the same file
    assert index.count() == 5
    matcher = MatcherWorker(
        index, ThumbnailStore(tmp_path / "t"), FeatureStore(tmp_path / "f"), producer, "dlq", metrics
    )
    consume_loop(bus.consumer(["features"], "matcher"), matcher.handle, threading.Event(), done)
    assert index.count() == len(crops)
    assert sorted(index.all_ids()) == sorted(c.detection.detection_id for c in crops)
    index.close()
