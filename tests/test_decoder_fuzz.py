"""Fuzzing the decoders: whatever the bytes, a decoder returns a record that every stage can use, or raises
MalformedRecord; never anything else. Bounded (a few hundred examples each) so it runs in every test run."""

from __future__ import annotations

import contextlib
import json
import math
import types

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgr.messages import (
    Detection,
    MalformedRecord,
    decode_crop,
    decode_feature,
    decode_features_topic,
    encode_crop,
    encode_feature,
    encode_sighting,
)
from tests.test_poison_records import crop_body, feature_body

FUZZ = settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
# edge values next to the limits the decoders enforce, beside arbitrary ones
EDGES = st.sampled_from(
    [1e300, -1.0, 2**63, -(2**63) - 1, "..", "c" * 65, "c" * 201, "a\ud800", "a/b", [[[[[[[[[[[]]]]]]]]]]]]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
    | EDGES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
CROP_FIELDS = list(crop_body())
FEATURE_FIELDS = list(feature_body()) + ["parts.shape", "instance.shape", "instance.dtype", "pixels.data"]


def _mutate(body: dict, edits: list[tuple[str, object]]) -> bytes:
    for key, value in edits:
        if "." in key:
            outer, inner = key.split(".")
            if isinstance(body.get(outer), dict):
                body[outer][inner] = value
        else:
            body[key] = value
    return json.dumps(body, allow_nan=True).encode()


def _check_usable(rec) -> None:
    """What the stages rely on after a successful decode."""
    d = rec.detection
    d.camera_id.encode("utf-8")
    d.detection_id.encode("utf-8")
    assert 0 < len(d.camera_id) <= 64 and len(d.detection_id) <= 200
    assert math.isfinite(d.timestamp) and all(math.isfinite(v) for v in d.box)
    assert 0 <= d.frame_index < 2**63


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(raw):
    for decode in (decode_crop, decode_feature, decode_features_topic):
        with contextlib.suppress(MalformedRecord):
            decode(raw)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(CROP_FIELDS), EDGES | json_values), min_size=1, max_size=4))
def test_mutated_crop_records(edits):
    try:
        rec = decode_crop(_mutate(crop_body(), edits))
    except MalformedRecord:
        return
    _check_usable(rec)
    assert decode_crop(encode_crop(rec)) == rec


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(FEATURE_FIELDS), EDGES | json_values), min_size=1, max_size=4))
def test_mutated_feature_records(edits):
    try:
        rec = decode_feature(_mutate(feature_body(), edits))
    except MalformedRecord:
        return
    _check_usable(rec)
    assert np.all(np.isfinite(rec.instance)) and np.linalg.norm(rec.instance) > 0
    model = rec.model.encode("utf-8")
    assert 0 < len(rec.model) <= 128 and model
    back = decode_feature(encode_feature(rec))
    assert back.detection == rec.detection and np.array_equal(back.instance, rec.instance)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(CROP_FIELDS), EDGES | json_values), min_size=1, max_size=4))
def test_mutated_sightings(edits):
    """A sighting is a crop record's detection without the crop: the same fields, the same checks."""
    body = crop_body()
    body.pop("jpeg")
    body["kind"] = "pgr.sighting"
    try:
        det = decode_features_topic(_mutate(body, edits))
    except MalformedRecord:
        return
    assert isinstance(det, Detection)
    _check_usable(types.SimpleNamespace(detection=det))
    assert decode_features_topic(encode_sighting(det)) == det
