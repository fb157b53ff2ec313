"""Records that used to slip past the decoders and crash a worker: each one is now a MalformedRecord."""

from __future__ import annotations

import json
import time

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
    encode_crop,
    encode_feature,
)

JPEG = cv2.imencode(".jpg", np.full((64, 32, 3), 128, np.uint8))[1].tobytes()
DET = Detection("cam1:12:t3", "cam1", 1000.5, 12, 3, (1.0, 2.0, 30.0, 80.0), 0.9, 1700000000.0)


def _unit(n: int) -> np.ndarray:
    v = np.ones(n, np.float32)
    return v / np.linalg.norm(v)


def feature_body() -> dict:
    rng = np.random.default_rng(0)
    rec = FeatureRecord(
        DET,
        "m",
        _unit(8),
        JPEG,
        parts=rng.random((5, 8)).astype(np.float16),
        part_visibility=np.array([1, 0, 1, 1, 0], bool),
        pixels=rng.random((3, 8)).astype(np.float16),
        pixel_coords=np.array([[0, 1], [2, 3], [15, 7]], np.int16),
    )
    return json.loads(encode_feature(rec))


def crop_body() -> dict:
    return json.loads(encode_crop(CropRecord(DET, JPEG)))


def array(a: np.ndarray) -> dict:
    import base64

    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# (name, field, value): each was accepted by the decoder (or raised something else) before validation
POISON_FIELDS = [
    ("camera id longer than the index column", "camera_id", "c" * 65),
    ("camera id with a path separator", "camera_id", "t/1"),
    ("camera id that is a parent directory", "camera_id", ".."),
    ("lone surrogate in the camera id", "camera_id", "cam\ud800"),
    ("lone surrogate in the detection id", "detection_id", "cam1:1:\udfff"),
    ("detection id too long for a file name", "detection_id", "cam1:" + "9" * 300),
    ("detection id with a control character", "detection_id", "cam1:1:\n"),
    ("timestamp of 1e300", "timestamp", 1e300),
    ("negative timestamp", "timestamp", -5.0),
    ("read_at of 1e300", "read_at", 1e300),
    ("box left of the frame", "box", [-50.0, 2.0, 30.0, 80.0]),
    ("box beyond any frame", "box", [1.0, 2.0, 1e12, 80.0]),
    ("frame index beyond int64", "frame_index", 2**70),
    ("track id beyond int64", "track_id", 2**70),
]


def _dump(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=True).encode()


@pytest.mark.parametrize("name, field, value", POISON_FIELDS, ids=[p[0] for p in POISON_FIELDS])
def test_poisoned_detection_fields_are_malformed(name, field, value):
    for body, decode in ((crop_body(), decode_crop), (feature_body(), decode_feature)):
        body[field] = value
        with pytest.raises(MalformedRecord):
            decode(_dump(body))


def _feature_poisons() -> list[tuple[str, dict]]:
    out = []

    def with_(name: str, **fields) -> None:
        body = feature_body()
        body.update(fields)
        out.append((name, body))

    with_("deep nesting in extra (RecursionError)", extra={"x": "PLACEHOLDER"})
    with_("nesting deeper than the limit in extra", extra={"x": json.loads(nested(40))})
    with_(
        "array shape whose size overflows", instance={"dtype": "float32", "shape": [2**40, 2**40], "data": ""}
    )
    with_("model name longer than the index column", model="m" * 129)
    with_("lone surrogate in the model name", model="m\ud800")
    with_("NaN part features", parts=array(np.full((5, 8), np.nan, np.float16)))
    with_("infinite pixel features", pixels=array(np.full((3, 8), np.inf, np.float16)))
    with_("zero instance vector", instance=array(np.zeros(8, np.float32)))
    with_("non-bool part visibility", part_visibility=array(np.array([5, 0, 1, 1, 0], np.int32)))
    with_(
        "pixel coordinates off the feature map",
        pixel_coords=array(np.array([[0, 1], [2, 3], [-9, 7]], np.int16)),
    )
    return out


FEATURE_POISONS = _feature_poisons()


@pytest.mark.parametrize("name, body", FEATURE_POISONS, ids=[p[0] for p in FEATURE_POISONS])
def test_poisoned_feature_records_are_malformed(name, body):
    raw = _dump(body).replace(b'"PLACEHOLDER"', nested(100_000).encode())
    with pytest.raises(MalformedRecord):
        decode_feature(raw)


def test_deep_nesting_in_a_crop_is_malformed():
    raw = _dump(crop_body())[:-1] + b',"extra":' + nested(100_000).encode() + b"}"
    with pytest.raises(MalformedRecord):
        decode_crop(raw)


def test_every_poison_is_refused_quickly():
    t0 = time.perf_counter()
    for _, body in FEATURE_POISONS:
        with pytest.raises(MalformedRecord):
            decode_feature(_dump(body).replace(b'"PLACEHOLDER"', nested(100_000).encode()))
    assert time.perf_counter() - t0 < 2.0


def test_valid_records_still_decode():
    assert decode_crop(_dump(crop_body())).detection == DET
    assert decode_feature(_dump(feature_body())).detection == DET


def test_a_row_poisoned_before_validation_does_not_crash_search_output():
    """Rows indexed before the decoders checked times (1e300) still print: the time is shown as a number."""
    from matcher.index import IndexedDetection
    from pgr.app.cli import format_hit

    hit = IndexedDetection("c:1:t1", "c", 1e300, 1, 1, (0, 0, 1, 1), 0.9, "t.jpg", "m", 0.0, 0.0, score=0.5)
    assert "time 1e+300" in format_hit(1, hit)
