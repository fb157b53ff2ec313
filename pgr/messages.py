"""The records that cross stage boundaries: one encode, one decode, validated on both sides.

A record travels as UTF-8 JSON. Binary fields (the JPEG, feature arrays) are base64 inside it, arrays
with their dtype and shape, so a consumer in any language can read them and a malformed record is caught
by `decode_*` before any stage acts on it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from pgr.validation import (
    MAX_ARRAY_DIMS,
    MAX_ARRAY_ELEMENTS,
    MAX_FRAME_SIDE,
    is_camera_id,
    is_detection_id,
    is_int64,
    is_model_name,
    json_depth_within,
    plausible_time,
    strings_encodable,
)

SCHEMA_VERSION = 1
CROP_KIND = "pgr.crop"
FEATURE_KIND = "pgr.feature"
SIGHTING_KIND = "pgr.sighting"
IDENTITY_KIND = "pgr.identity"
IDENTITY_EVENTS = ("created", "joined", "moved", "merged", "confirmed")
JPEG_MAGIC = b"\xff\xd8\xff"
MAX_RECORD_BYTES = 8 * 1024 * 1024
_ARRAY_DTYPES = {"float32", "float16", "int16", "int32", "uint8", "bool"}


class MalformedRecord(ValueError):
    """A record that cannot be decoded or fails validation; it goes to the dead-letter topic."""


def detection_id(
    camera_id: str, frame_index: int, track_id: int, index_in_frame: int, run: str | None = None
) -> str:
    """The stable id of one detection: the same video gives the same ids, so redelivery and re-ingesting a
    file are idempotent. A live source's frame and track counters restart with every ingest run, so its ids
    carry the run (`run`), and a restarted camera never overwrites what an earlier run indexed."""
    who = f"t{track_id}" if track_id >= 0 else f"d{index_in_frame}"
    return f"{camera_id}:{run}:{frame_index}:{who}" if run else f"{camera_id}:{frame_index}:{who}"


def track_key(det: Detection) -> str:
    """The local track a detection belongs to: `camera:track`, or `camera:run:track` for a live source (its
    ids carry the ingest run, so a restarted camera's new tracker never continues an old track); an
    untracked detection is a track of its own (`camera:d<frame>-<index>`)."""
    parts = det.detection_id.split(":")
    run = parts[1] if len(parts) == 4 else None
    track = f"t{det.track_id}" if det.track_id >= 0 else "d" + "-".join(parts[-2:])
    return ":".join(p for p in (det.camera_id, run, track) if p)


def run_tag() -> str:
    """A tag unique to one ingest run of a live source: its start in milliseconds and 16 random bits."""
    return f"r{int(time.time() * 1000):x}{secrets.token_hex(2)}"


@dataclass
class CropFeatures:
    """Features of one crop, as an extractor gives them; optional granularities are None when the model
    does not produce them."""

    instance: np.ndarray  # (d,) float32, L2-normalised
    parts: np.ndarray | None = None  # (p, d)
    part_visibility: np.ndarray | None = None  # (p,) bool
    pixels: np.ndarray | None = None  # (n, d') foreground pixel features
    pixel_coords: np.ndarray | None = None  # (n, 2) int16 (row, col) on the feature map


@dataclass(frozen=True)
class Detection:
    """Where and when a person was seen; shared by crop and feature records."""

    detection_id: str
    camera_id: str
    timestamp: float
    frame_index: int
    track_id: int
    box: tuple[float, float, float, float]
    score: float
    read_at: float = 0.0  # wall-clock time the frame was decoded: for end-to-end latency

    def __post_init__(self) -> None:
        _require(
            self.read_at == 0.0 or plausible_time(self.read_at),
            "bad read_at: not a unix time up to a year ahead",
        )
        _require(
            is_detection_id(self.detection_id), "bad detection_id: want 1-200 of A-Z a-z 0-9 _ . : @ + -"
        )
        _require(is_camera_id(self.camera_id), "bad camera_id: want 1-64 of A-Z a-z 0-9 _ . -")
        _require(
            plausible_time(self.timestamp), "bad timestamp: not a unix time between 1970 and a year ahead"
        )
        _require(is_int64(self.frame_index) and self.frame_index >= 0, "bad frame_index")
        _require(is_int64(self.track_id) and self.track_id >= -1, "bad track_id")
        _require(
            isinstance(self.box, tuple) and len(self.box) == 4 and all(_is_number(v) for v in self.box),
            "box must be four numbers",
        )
        x1, y1, x2, y2 = self.box
        _require(
            all(math.isfinite(v) for v in self.box) and x2 > x1 and y2 > y1, "box must have x2>x1, y2>y1"
        )
        _require(
            all(0 <= v <= MAX_FRAME_SIDE for v in self.box),
            f"box must lie in the frame (0..{MAX_FRAME_SIDE})",
        )
        _require(_is_number(self.score) and 0.0 <= self.score <= 1.0, "score must be in [0, 1]")

    def _fields(self) -> dict[str, Any]:
        return {
            "detection_id": self.detection_id,
            "camera_id": self.camera_id,
            "timestamp": self.timestamp,
            "frame_index": self.frame_index,
            "track_id": self.track_id,
            "box": list(self.box),
            "score": self.score,
            "read_at": self.read_at,
        }

    @staticmethod
    def _from_fields(d: dict[str, Any]) -> dict[str, Any]:
        box = d.get("box")
        _require(isinstance(box, list), "box must be a list")
        return {
            "detection_id": d.get("detection_id"),
            "camera_id": d.get("camera_id"),
            "timestamp": d.get("timestamp"),
            "frame_index": d.get("frame_index"),
            "track_id": d.get("track_id"),
            "box": tuple(box),
            "score": d.get("score"),
            "read_at": d.get("read_at", 0.0),
        }


_SIGHTING_FIELDS = frozenset({"kind", "version"} | {f.name for f in fields(Detection)})


@dataclass(frozen=True)
class CropRecord:
    """One person crop from ingest: the detection plus the crop as JPEG."""

    detection: Detection
    jpeg: bytes

    def __post_init__(self) -> None:
        _require(isinstance(self.jpeg, bytes) and self.jpeg.startswith(JPEG_MAGIC), "jpeg is not a JPEG")


@dataclass(frozen=True)
class FeatureRecord:
    """Features of one detection from a re-ID worker.

    `instance` is the L2-normalised instance vector (d,). `parts` (p, d) with `part_visibility` (p,) and
    `pixels` (n, d') with `pixel_coords` (n, 2: row, col on the feature map) are optional: a model without
    them (the ImageNet placeholder) leaves them empty; d' may be smaller than d (compressed pixels).
    `jpeg` is the crop, kept as the thumbnail.
    """

    detection: Detection
    model: str
    instance: np.ndarray
    jpeg: bytes
    parts: np.ndarray | None = None
    part_visibility: np.ndarray | None = None
    pixels: np.ndarray | None = None
    pixel_coords: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(is_model_name(self.model), "model must be named (printable, at most 128 characters)")
        inst = self.instance
        _require(isinstance(inst, np.ndarray) and inst.ndim == 1 and inst.size > 0, "instance must be (d,)")
        _require(bool(np.all(np.isfinite(inst))), "instance has non-finite values")
        _require(float(np.linalg.norm(inst.astype(np.float64))) > 1e-6, "instance is a zero vector")
        for name in ("parts", "pixels"):
            value = getattr(self, name)
            _require(value is None or bool(np.all(np.isfinite(value))), f"{name} have non-finite values")
        _require(
            self.part_visibility is None or self.part_visibility.dtype == np.bool_,
            "part_visibility must be bool",
        )
        _require(
            self.pixel_coords is None or bool(np.all(self.pixel_coords >= 0)), "pixel_coords must be >= 0"
        )
        _require(isinstance(self.jpeg, bytes) and self.jpeg.startswith(JPEG_MAGIC), "jpeg is not a JPEG")
        d = inst.shape[0]
        if self.parts is not None:
            _require(self.parts.ndim == 2 and self.parts.shape[1] == d, "parts must be (p, d)")
            vis = self.part_visibility
            _require(vis is not None and vis.shape == (self.parts.shape[0],), "part_visibility must be (p,)")
        if self.pixels is not None:
            _require(self.pixels.ndim == 2 and self.pixels.shape[1] > 0, "pixels must be (n, d')")
            coords = self.pixel_coords
            _require(
                coords is not None and coords.shape == (self.pixels.shape[0], 2),
                "pixel_coords must be (n, 2)",
            )

    def crop_features(self) -> CropFeatures:
        """The features as the extractor gave them."""
        return CropFeatures(self.instance, self.parts, self.part_visibility, self.pixels, self.pixel_coords)


@dataclass(frozen=True)
class IdentityEvent:
    """One change of the global identities, from the matcher.

    `kind`: created (a tracklet founded `identity_id`), joined (a tracklet joined it), moved (a tracklet
    left `previous_id` for it), merged (every tracklet of `previous_id` now belongs to it) or confirmed (the
    tracklet ended and stays where it was). `tracklet_id`
    is `camera:track` (with the ingest run for live sources); `first_seen`/`last_seen` are the tracklet's
    stream times; `score` is the match score that decided (0 for created); `seq` numbers the matcher's
    decisions, so a consumer of a replay can drop an event it has seen (same tracklet, kind and seq).
    """

    kind: str
    identity_id: str
    tracklet_id: str
    camera_id: str
    first_seen: float
    last_seen: float
    score: float
    seq: int
    previous_id: str = ""
    thumbnail: str = ""
    decided_at: float = 0.0  # wall-clock time of the decision: for the end-to-identity latency
    ended: bool = False  # decided at the tracklet's end (else when it became long enough)

    def __post_init__(self) -> None:
        _require(self.kind in IDENTITY_EVENTS, f"kind must be one of {IDENTITY_EVENTS}")
        for name in ("identity_id", "tracklet_id"):
            _require(is_detection_id(getattr(self, name)), f"bad {name}: want 1-200 of A-Za-z0-9_.:@+-")
        _require(self.previous_id == "" or is_detection_id(self.previous_id), "bad previous_id")
        moved = self.kind in ("moved", "merged")
        _require((self.previous_id != "") == moved, "previous_id is for (and only for) moved and merged")
        _require(is_camera_id(self.camera_id), "bad camera_id: want 1-64 of A-Z a-z 0-9 _ . -")
        _require(
            plausible_time(self.first_seen) and plausible_time(self.last_seen), "bad first_seen/last_seen"
        )
        _require(self.first_seen <= self.last_seen, "first_seen after last_seen")
        _require(_is_number(self.score) and math.isfinite(self.score), "score must be a finite number")
        _require(is_int64(self.seq) and self.seq >= 0, "bad seq")
        _require(self.decided_at == 0.0 or plausible_time(self.decided_at), "bad decided_at")
        _require(isinstance(self.thumbnail, str) and len(self.thumbnail) <= 1024, "bad thumbnail")
        _require(isinstance(self.ended, bool), "ended must be a boolean")


def encode_crop(rec: CropRecord) -> bytes:
    """Serialise a crop record for the bus."""
    body = {"kind": CROP_KIND, "version": SCHEMA_VERSION, **rec.detection._fields(), "jpeg": _b64(rec.jpeg)}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_crop(raw: bytes) -> CropRecord:
    """Parse and validate a crop record; raises MalformedRecord."""
    d = _load(raw, CROP_KIND)
    try:
        return CropRecord(Detection(**Detection._from_fields(d)), _unb64(d.get("jpeg")))
    except (TypeError, KeyError) as exc:
        raise MalformedRecord(str(exc)) from exc


def encode_feature(rec: FeatureRecord) -> bytes:
    """Serialise a feature record for the bus."""
    body: dict[str, Any] = {
        "kind": FEATURE_KIND,
        "version": SCHEMA_VERSION,
        **rec.detection._fields(),
        "model": rec.model,
        "instance": _array_out(rec.instance),
        "jpeg": _b64(rec.jpeg),
        "extra": rec.extra,
    }
    for name in ("parts", "part_visibility", "pixels", "pixel_coords"):
        value = getattr(rec, name)
        if value is not None:
            body[name] = _array_out(value)
    return json.dumps(body, separators=(",", ":")).encode()


def decode_feature(raw: bytes) -> FeatureRecord:
    """Parse and validate a feature record; raises MalformedRecord."""
    return _feature_from(_load(raw, FEATURE_KIND))


def encode_sighting(det: Detection) -> bytes:
    """Serialise a sighting: a detection the re-ID stage shed (no features, no crop). It travels on the
    features topic, in order with the feature records of its camera, so that the matcher knows a track
    goes on while its crops are shed (its tracklet neither ends early nor splits)."""
    body = {"kind": SIGHTING_KIND, "version": SCHEMA_VERSION, **det._fields()}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_features_topic(raw: bytes) -> FeatureRecord | Detection:
    """Parse and validate a record of the features topic: a feature record, or a sighting (its Detection);
    raises MalformedRecord."""
    d = _load(raw, (FEATURE_KIND, SIGHTING_KIND))
    if d["kind"] == FEATURE_KIND:
        return _feature_from(d)
    _require(set(d) <= _SIGHTING_FIELDS, "unknown fields in a sighting")
    try:
        return Detection(**Detection._from_fields(d))
    except TypeError as exc:
        raise MalformedRecord(str(exc)) from exc


def _feature_from(d: dict[str, Any]) -> FeatureRecord:
    try:
        optional = {
            k: _array_in(d[k]) for k in ("parts", "part_visibility", "pixels", "pixel_coords") if k in d
        }
        extra = d.get("extra", {})
        _require(isinstance(extra, dict), "extra must be an object")
        return FeatureRecord(
            detection=Detection(**Detection._from_fields(d)),
            model=d.get("model"),
            instance=_array_in(d.get("instance")),
            jpeg=_unb64(d.get("jpeg")),
            extra=extra,
            **optional,
        )
    except (TypeError, KeyError) as exc:
        raise MalformedRecord(str(exc)) from exc


def encode_identity(ev: IdentityEvent) -> bytes:
    """Serialise an identity event for the bus."""
    body = {"kind": IDENTITY_KIND, "version": SCHEMA_VERSION, "event": ev.kind}
    body.update({f.name: getattr(ev, f.name) for f in fields(ev) if f.name != "kind"})
    return json.dumps(body, separators=(",", ":")).encode()


def decode_identity(raw: bytes) -> IdentityEvent:
    """Parse and validate an identity event; raises MalformedRecord."""
    d = _load(raw, IDENTITY_KIND)
    names = {f.name for f in fields(IdentityEvent)} - {"kind"}
    _require(set(d) - {"kind", "version", "event"} <= names, "unknown fields in an identity event")
    try:
        return IdentityEvent(kind=d.get("event"), **{k: v for k, v in d.items() if k in names})
    except TypeError as exc:
        raise MalformedRecord(str(exc)) from exc


def _load(raw: bytes, kind: str | tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, bytes | bytearray):
        raise MalformedRecord("record is not bytes")
    if len(raw) > MAX_RECORD_BYTES:
        raise MalformedRecord(f"record of {len(raw)} bytes exceeds {MAX_RECORD_BYTES}")
    try:
        d = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRecord(f"not JSON: {exc}") from exc
    except RecursionError:
        raise MalformedRecord("JSON nested too deeply") from None
    _require(isinstance(d, dict), "record is not a JSON object")
    _require(json_depth_within(d), "JSON nested too deeply")
    _require(strings_encodable(d), "a string cannot be encoded as UTF-8 (lone surrogate)")
    kinds = (kind,) if isinstance(kind, str) else kind
    want = " or ".join(repr(k) for k in kinds)
    _require(d.get("kind") in kinds, f"expected kind {want}, got {d.get('kind')!r}")
    _require(d.get("version") == SCHEMA_VERSION, f"unsupported version {d.get('version')!r}")
    return d


def _array_out(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": _b64(a.tobytes())}


def _array_in(d: Any) -> np.ndarray:
    _require(isinstance(d, dict), "array must be an object")
    dtype, shape = d.get("dtype"), d.get("shape")
    _require(dtype in _ARRAY_DTYPES, f"unsupported dtype {dtype!r}")
    _require(
        isinstance(shape, list)
        and len(shape) <= MAX_ARRAY_DIMS
        and all(_is_int(s) and 0 <= s <= MAX_ARRAY_ELEMENTS for s in shape)
        and math.prod(shape) <= MAX_ARRAY_ELEMENTS,
        f"bad array shape {str(shape)[:40]}: at most {MAX_ARRAY_DIMS} dims of {MAX_ARRAY_ELEMENTS} elements",
    )
    data = _unb64(d.get("data"))
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    _require(len(data) == expected, f"array data has {len(data)} bytes, shape needs {expected}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: Any) -> bytes:
    _require(isinstance(s, str), "binary field must be a base64 string")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedRecord(f"bad base64: {exc}") from exc


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _require(ok: bool, why: str) -> None:
    if not ok:
        raise MalformedRecord(why)
