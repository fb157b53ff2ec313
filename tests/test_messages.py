"""Crop and feature records: round trips, and every kind of malformed input rejected with a reason."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pgr.messages import (
    CropRecord,
    Detection,
    FeatureRecord,
    MalformedRecord,
    decode_crop,
    decode_feature,
    decode_features_topic,
    detection_id,
    encode_crop,
    encode_feature,
    encode_sighting,
)

JPEG = cv2.imencode(".jpg", np.full((64, 32, 3), 128, np.uint8))[1].tobytes()


def det(**kw) -> Detection:
    base = dict(
        detection_id=detection_id("cam1", 12, 3, 0),
        camera_id="cam1",
        timestamp=1000.5,
        frame_index=12,
        track_id=3,
        box=(1.0, 2.0, 30.0, 80.0),
        score=0.9,
        read_at=1700000000.0,
    )
    return Detection(**{**base, **kw})


def test_crop_round_trip():
    rec = CropRecord(det(), JPEG)
    assert decode_crop(encode_crop(rec)) == rec


def test_feature_round_trip_with_every_granularity():
    rng = np.random.default_rng(0)
    rec = FeatureRecord(
        detection=det(),
        model="m",
        instance=rng.random(8, dtype=np.float32),
        jpeg=JPEG,
        parts=rng.random((5, 8)).astype(np.float16),
        part_visibility=np.array([1, 0, 1, 1, 0], bool),
        pixels=rng.random((3, 8)).astype(np.float16),
        pixel_coords=np.array([[0, 1], [2, 3], [15, 7]], np.int16),
    )
    back = decode_feature(encode_feature(rec))
    assert back.detection == rec.detection
    for name in ("instance", "parts", "part_visibility", "pixels", "pixel_coords"):
        a, b = getattr(rec, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_detection_ids_are_stable_and_distinct_for_untracked_boxes():
    assert detection_id("c", 5, 7, 0) == detection_id("c", 5, 7, 3) == "c:5:t7"
    assert detection_id("c", 5, -1, 0) != detection_id("c", 5, -1, 1)


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"\x00\xff binary", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"kind": "pgr.feature", "version": 1}', "expected kind"),
        (b'{"kind": "pgr.crop", "version": 99}', "unsupported version"),
    ],
)
def test_garbage_is_rejected(raw, why):
    with pytest.raises(MalformedRecord, match=why):
        decode_crop(raw)


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("box", [5, 5, 1, 1], "x2>x1"),
        ("box", [1, 2, 3], "four numbers"),
        ("score", 1.5, "score"),
        ("frame_index", -1, "frame_index"),
        ("camera_id", "", "camera_id"),
        ("timestamp", "yesterday", "timestamp"),
        ("jpeg", "bm90IGEganBlZw==", "not a JPEG"),
        ("jpeg", "***", "base64"),
    ],
)
def test_bad_fields_are_rejected(field, value, why):
    body = json.loads(encode_crop(CropRecord(det(), JPEG)))
    body[field] = value
    with pytest.raises(MalformedRecord, match=why):
        decode_crop(json.dumps(body).encode())


def test_feature_array_with_wrong_byte_count_is_rejected():
    rec = FeatureRecord(det(), "m", np.ones(8, np.float32), JPEG)
    body = json.loads(encode_feature(rec))
    body["instance"]["shape"] = [9]
    with pytest.raises(MalformedRecord, match="bytes"):
        decode_feature(json.dumps(body).encode())
    body["instance"] = {"dtype": "object", "shape": [1], "data": ""}
    with pytest.raises(MalformedRecord, match="dtype"):
        decode_feature(json.dumps(body).encode())


def test_the_features_topic_carries_feature_records_and_sightings():
    """A sighting (a shed crop: its detection, no features) decodes beside feature records on the features
    topic; one with extra fields, a bad box or another kind is refused with the reason."""
    d = det()
    assert decode_features_topic(encode_sighting(d)) == d
    rec = FeatureRecord(d, "m", np.ones(4, np.float32) / 2, JPEG)
    assert decode_features_topic(encode_feature(rec)).detection == d
    body = json.loads(encode_sighting(d))
    for change, why in (
        ({"instance": [1.0]}, "unknown fields in a sighting"),
        ({"box": [5.0, 5.0, 1.0, 1.0]}, "x2>x1"),
        ({"kind": "pgr.crop"}, "expected kind 'pgr.feature' or 'pgr.sighting'"),
    ):
        with pytest.raises(MalformedRecord, match=why):
            decode_features_topic(json.dumps({**body, **change}).encode())
    with pytest.raises(MalformedRecord, match="expected kind 'pgr.feature'"):
        decode_feature(encode_sighting(d))  # a reader of feature records alone refuses a sighting
