"""Settings: read once from YAML, validated at start, passed down as plain values.

One system for every config of the project (the pipeline's `Settings` here, training's `TrainConfig`):
`read_config` reads a YAML file, expands ${VAR} and ${VAR:-default} in strings and, when the file says
`base: other.yaml` (relative to the file), deep-merges it over that base, so an experiment file holds only
what differs; `validate_config` checks it against a strict model (`StrictModel`: unknown keys are errors)
and turns every mistake into one line that names the key. Relative paths of the pipeline config are taken
from the directory of the file that writes them, so a config works from any working directory.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from pgr.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from pgr.model_files import require_model_file
from pgr.paths import SHIPPED_WEIGHTS
from pgr.validation import is_camera_id

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Port = Annotated[int, Field(ge=1, le=65535)]
PartScore = Literal["isp", "eq4"]  # the reading of Eq. 4 (s_part): ISP's, or as printed
# The project's own trained PGR weights (RESULTS.md: how they were trained).
DEFAULT_PGR_CHECKPOINT = SHIPPED_WEIGHTS / "pgr_mobilenetv2_market1501.pt"
# Intel's person-reidentification-retail-0277 IR (Apache-2.0), shipped beside them.
DEFAULT_OPENVINO_REID = (
    SHIPPED_WEIGHTS / "person-reidentification-retail-0277" / "person-reidentification-retail-0277.xml"
)
# The project's PGR heads trained on 0277's maps (Market-1501): the default re-ID model (RESULTS.md).
DEFAULT_OPENVINO_HEADS = SHIPPED_WEIGHTS / "pgr_0277_market1501.pt"

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """The config cannot be used; the message says which key and why."""


class StrictModel(BaseModel):
    """A settings section: unknown keys are errors, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)
FilePaths = Callable[[dict[str, Any], Path], dict[str, Any]]  # (a file's config, its folder) -> config


class RetrySettings(StrictModel):
    initial_s: float = Field(1.0, gt=0)
    max_s: float = Field(30.0, gt=0)
    max_attempts: int | None = Field(None, ge=1, description="None: retry forever (live cameras)")


class CameraSettings(StrictModel):
    id: str = Field(min_length=1, max_length=64, description="1-64 of A-Z a-z 0-9 _ . - (not . or ..)")
    source: str = Field(
        min_length=1, description="video file, rtsp:// or http:// URL, webcam index, image folder"
    )
    fps: float = Field(2.0, gt=0, description="frames sampled per second")
    max_frames: int | None = Field(None, ge=1, description="stop after this many source frames")
    start_time: float | None = Field(None, description="unix time of the first frame of a file source")
    realtime: bool = Field(
        False, description="pace a file source at its native frame rate, like a live camera"
    )
    track: bool = Field(
        True, description="link detections across frames into tracks; false for a folder of unrelated stills"
    )
    id_tag: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,32}$",
        description="a tag in the file's detection ids, so that files of one camera never share ids "
        "(`pgr index` sets one per file)",
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not is_camera_id(v):
            raise ValueError(f"camera id {v!r}: want 1-64 of A-Z a-z 0-9 _ . - (not . or ..)")
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if "://" in v:
            scheme = urlparse(v).scheme
            if scheme not in {"rtsp", "rtsps", "http", "https", "rtmp", "file"}:
                raise ValueError(f"unsupported camera URL scheme {scheme!r}")
        return v


class IngestSettings(StrictModel):
    detector_weights: Path
    tracker: str = "bytetrack.yaml"
    conf: float = Field(0.4, ge=0, le=1)
    imgsz: int = Field(
        640, ge=32, multiple_of=32, description="detector input, long side (BENCHMARKS.md: recall per size)"
    )
    square_input: bool = Field(
        False,
        description="letterbox frames into imgsz x imgsz (ultralytics' way with a fixed-size export); false: "
        "keep the frame's aspect (640 x 480 for 4:3 at 640: the same scale, less work)",
    )
    detect_batch: int = Field(4, ge=1, le=64, description="frames of different cameras in one inference")
    live_buffer_frames: int = Field(
        2,
        ge=1,
        le=100,
        description="frames a live camera holds while the detector is busy; with more, the oldest is dropped",
    )
    detector_threads: int = Field(0, ge=0, description="OpenVINO threads of the detector; 0: every core")
    representative_s: float | None = Field(
        None,
        gt=0,
        description="per local track, publish one crop (the best) per this many seconds of stream, and a new "
        "track's first crop at once; null: every crop of every sampled frame",
    )
    min_box_height: int = Field(48, ge=1)
    min_box_width: int = Field(16, ge=1)
    padding: float = Field(0.1, ge=0, le=1)
    jpeg_quality: int = Field(90, ge=10, le=100)
    retry: RetrySettings = RetrySettings()


class ReidSettings(StrictModel):
    model: Literal["pgr-openvino", "pgr", "imagenet-gap"] = Field(
        "pgr-openvino",
        description="pgr-openvino: PGR heads (`heads`) on a frozen OpenVINO re-ID IR (`ir`), the default; "
        "pgr: an end-to-end torch PGR model (`backbone`, `checkpoint`); "
        "imagenet-gap: ImageNet pooling (baseline)",
    )
    ir: Path = Field(DEFAULT_OPENVINO_REID, description="pgr-openvino: the OpenVINO re-ID IR (.xml)")
    heads: Path = Field(
        DEFAULT_OPENVINO_HEADS, description="pgr-openvino: PGR heads trained on that IR's maps"
    )
    backbone: Literal["mobilenetv2", "efficientnet_lite0", "resnet50", "osnet_x0_25"] = "mobilenetv2"
    weights: Path | None = Field(None, description="ImageNet backbone weights (None: random init, resnet50)")
    checkpoint: Path | None = Field(
        DEFAULT_PGR_CHECKPOINT,
        description="a trained PGR checkpoint (default: the shipped one); null: untrained part classifier",
    )
    pixel_dim: int | None = Field(64, ge=8, description="stored pixel feature size (fixed projection)")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="auto, cpu, cuda[:N], mps"
    )
    batch_size: int = Field(16, ge=1, le=1024)
    threads: int = Field(
        0,
        ge=0,
        description="pgr-openvino: OpenVINO threads of the extractor; 0: automatic, every core when the "
        "re-ID stage runs alone (`pgr run reid`), one fewer when it shares the process with the other "
        "stages (embedded, `pgr index`)",
    )
    precision: Literal["auto", "f32", "bf16", "int8"] = Field(
        "auto",
        description="pgr-openvino: inference precision; auto: bf16 where the CPU computes it natively "
        "(AVX512-BF16, AMX: about twice the crops/s, RESULTS.md), else int8 (the IR's int8 sibling, "
        "training/quantize_openvino.py: about twice f32 on AVX2) where it is present, else f32",
    )
    sample_every_s: float = Field(
        0.0,
        ge=0,
        description="extract a track's crops at most this often (stream seconds; 0: every crop); the others "
        "are not indexed (reid/sampling.py; RESULTS.md IDENTITIES has the trade)",
    )
    shed_after_s: float = Field(
        0.0,
        ge=0,
        description="live load shedding: a crop whose features would come out longer than this after its "
        "frame was read (its wait plus the extraction queued ahead of it) is extracted only if its track "
        "had none for shed_every_s (0: off, every crop waits its turn; reid/sampling.py)",
    )
    shed_every_s: float = Field(4.0, gt=0, description="the sampling interval while shedding (stream s)")
    shed_hard_after_s: float = Field(
        0.0,
        ge=0,
        description="hard shedding: a crop later than this (as for shed_after_s) is extracted only if it is "
        "among its tracklet's first shed_hard_crops, so the stage falls at most about this far behind "
        "(0: off; above shed_after_s)",
    )
    shed_hard_crops: int = Field(
        1,
        ge=1,
        description="hard shedding extracts this many crops of a tracklet: its first, then each a "
        "shed_every_s after the last (1 bounds the delay; 2 keeps identities near every-6-s quality but "
        "lets the delay grow where tracks come faster than half the extraction rate: RESULTS.md)",
    )
    shed_hard_min_quality: float = Field(
        0.0,
        ge=0,
        le=1,
        description="hard shedding: a tracklet's due crop below this quality (the matcher's crop_quality: "
        "box height, detection score, sharpness, border cut) waits for a better one, at most until "
        "shed_hard_wait_crops were due or shed_hard_wait_s passed (0: off; choose it on a site's own "
        "footage: RESULTS.md)",
    )
    shed_hard_wait_crops: int = Field(
        3, ge=1, description="hard shedding: the due crop extracted whatever its quality (1: the first)"
    )
    shed_hard_wait_s: float = Field(
        0.0,
        ge=0,
        description="hard shedding: ... or the first due crop this long (stream seconds) after the first "
        "one passed over, whichever comes first (0: off; a wait that means the same at any crop rate)",
    )
    shed_all_after_s: float = Field(
        0.0,
        ge=0,
        description="a crop later than this is not extracted at all, not even a tracklet's first: a bound "
        "on the delay whatever the stream brings; a track that ends within such a stretch gets its "
        "identity late, from its best crop once the stage has caught up (shed_rescue_tracks), or never "
        "(0: off; above shed_hard_after_s)",
    )
    shed_rescue_tracks: int = Field(
        256,
        ge=0,
        description="tracks whose tracklet got no crop extracted (shed past shed_all_after_s, or passed "
        "over for quality) of which the stage keeps the best shed crop, to extract once the track has "
        "ended and the stage is back under that bound: an identity late rather than never (0: off; "
        "reid/service.py)",
    )

    @model_validator(mode="after")
    def _hard_shedding_above_shedding(self) -> ReidSettings:
        if self.shed_hard_after_s > 0 and not 0 < self.shed_after_s < self.shed_hard_after_s:
            raise ValueError(
                f"reid.shed_hard_after_s ({self.shed_hard_after_s}) needs reid.shed_after_s above 0 and "
                f"below it (got {self.shed_after_s})"
            )
        if self.shed_all_after_s > 0 and not 0 < self.shed_hard_after_s < self.shed_all_after_s:
            raise ValueError(
                f"reid.shed_all_after_s ({self.shed_all_after_s}) needs reid.shed_hard_after_s above 0 "
                f"and below it (got {self.shed_hard_after_s})"
            )
        return self

    @model_validator(mode="after")
    def _placeholder_needs_mobilenet(self) -> ReidSettings:
        if self.model == "imagenet-gap" and (self.backbone != "mobilenetv2" or self.weights is None):
            raise ValueError("model imagenet-gap needs backbone mobilenetv2 and its weights")
        return self

    input_height: int = Field(256, ge=32)
    input_width: int = Field(128, ge=16)


class IdentitySettings(StrictModel):
    """Tracklets and global identities in the matcher (matcher/tracklets.py, matcher/identities.py)."""

    enabled: bool = Field(True, description="form tracklets and global identities beside the index")
    end_gap_s: float = Field(
        5.0, gt=0, description="a tracklet ends when its camera's stream runs this long past its last crop"
    )
    idle_end_s: float = Field(
        10.0, gt=0, description="... or when no crop at all arrived for this long (wall clock)"
    )
    camera_skew_s: float = Field(
        2.0,
        ge=0,
        description="... or when any camera's stream runs end_gap_s + this past it (how far apart the "
        "cameras' clocks may be)",
    )
    min_crops: int = Field(4, ge=1, description="a tracklet this long is matched before it ends")
    keep_best: int = Field(3, ge=1, le=64, description="crops kept per tracklet, with parts and pixels")
    window_s: float = Field(
        1800.0, gt=0, description="identities seen this long before a tracklet are candidates"
    )
    threshold: float = Field(
        0.78,
        ge=0,
        le=1,
        description="join at or above this score, else found (RESULTS.md IDENTITIES: calibrated for the "
        "default model on the DukeMTMC-reID training replay; recalibrate: python -m pgr.app.identity_eval "
        "calibrate)",
    )
    merge_threshold: float | None = Field(
        0.80,
        ge=0,
        le=1,
        description="every merge of two identities needs this: a tracklet that matches two identities at or "
        "above it bridges them, and one that moves at its end takes its old identity along only at or above "
        "it (None: threshold; calibrated with threshold)",
    )
    shared_camera_direct: bool = Field(
        True,
        description="a merge of two identities both seen on one camera also needs them to match each other "
        "at threshold without the tracklet that bridges them (RESULTS.md IDENTITIES: chosen on the "
        "DukeMTMC-reID training replay)",
    )
    instance_only: bool = Field(False, description="match with the instance feature alone (no parts/pixels)")
    candidates: int = Field(5, ge=1, description="identities re-ranked with parts and pixels")
    cameras: list[str] | None = Field(
        None, description="cameras whose tracklets form identities (None: any); others are counted"
    )
    overlapping: list[list[str]] = Field(
        default_factory=list, description="groups of cameras whose fields of view overlap"
    )
    transitions: dict[str, float] | None = Field(
        None,
        description="optional camera-transition map 'A>B': least seconds from leaving A to entering B; "
        "when given, a pair not listed cannot be linked",
    )
    store: Path | None = Field(None, description="identity state (SQLite; default: beside thumbnails)")


class MatcherSettings(StrictModel):
    """Index, stores and progressive retrieval (n1..part_score: the one place their defaults, the paper's, are
    written; reid.retrieval.RetrievalParams takes them from here)."""

    index: Literal["embedded", "milvus"] = Field(
        "embedded",
        description="embedded: the project's own index in index_dir (fast to a million rows and more on "
        "one machine; any number of local processes); milvus: a Milvus server or milvus-lite file at "
        "milvus_uri (the scale-out path; the default when milvus_uri is given). BENCHMARKS.md, Index",
    )
    index_dir: Path | None = Field(None, description="the embedded index (default: beside thumbnails)")
    milvus_uri: str | None = Field(None, description="index: milvus: a .db file or http(s)://host:port")
    collection: str = Field("detections", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    thumbnails_dir: Path
    milvus_token: SecretStr | None = Field(
        None, description="user:password of a Milvus server with authentication on (PGR_MILVUS_TOKEN)"
    )

    @field_validator("milvus_token", mode="before")
    @classmethod
    def _no_token(cls, v):
        return v or None  # an unset ${VAR:-} in the YAML

    features_dir: Path | None = Field(
        None, description="part/pixel feature store (default: beside thumbnails)"
    )
    batch_size: int = Field(64, ge=1)
    linger_s: float = Field(
        0.1,
        ge=0,
        le=5,
        description="after a poll that brought fewer than batch_size records, wait up to this long for "
        "more: each write of a batch has fixed costs (fsyncs, manifests, the identity store: about 20 ms "
        "of CPU on 2 cores), so several records a write leave the CPU to the re-ID stage (RESULTS.md)",
    )
    n1: int = Field(1000, ge=1, description="progressive retrieval: candidates re-ranked with parts")
    # a1, a2: chosen for the default model on held-out training identities (RESULTS.md "Settings"); the
    # paper's values are 0.05 and 0.8
    a1: float = Field(0.6, ge=0, le=1)
    n2: int = Field(30, ge=1, description="progressive retrieval: candidates re-ranked with pixels")
    a2: float = Field(0.95, ge=0, le=1)
    part_score: PartScore = Field(
        "isp",
        description="Eq. 4 reading: isp adds s_ins to the numerator (default, RESULTS.md); eq4: as printed",
    )
    # stage 3: the final top n3 re-ranked by k-reciprocal neighbours among themselves (Zhong et al. 2017's
    # k1, k2; a3 is their lambda); the best mean of R1 and mAP over the three validation splits with n3 at
    # most 200 (a search's time budget), RESULTS.md "Settings"
    n3: int = Field(
        200, ge=0, description="k-reciprocal re-ranking of a search's final top n3 among themselves (0: off)"
    )
    a3: float = Field(0.3, ge=0, le=1, description="weight of the progressive distance in stage 3")
    k1: int = Field(15, ge=1, description="stage 3: k-reciprocal neighbours")
    k2: int = Field(6, ge=1, description="stage 3: neighbours averaged in the local query expansion")
    identities: IdentitySettings = IdentitySettings()

    @model_validator(mode="before")
    @classmethod
    def _milvus_when_named(cls, data):
        """A config that names a Milvus and no index means Milvus (configs older than the embedded index)."""
        if isinstance(data, dict) and data.get("milvus_uri") and "index" not in data:
            return {**data, "index": "milvus"}
        return data

    @model_validator(mode="after")
    def _token_needs_server(self) -> MatcherSettings:
        if self.index == "embedded" and self.milvus_uri is not None:
            log.warning("matcher.index is embedded: milvus_uri %s is not used", self.milvus_uri)
        if self.index == "milvus" and self.milvus_uri is None:
            raise ValueError("index: milvus needs milvus_uri (a .db file or http(s)://host:port)")
        if self.milvus_token is not None and "://" not in (self.milvus_uri or ""):
            raise ValueError("milvus_token needs a Milvus server URI (milvus-lite files have no users)")
        return self

    @property
    def index_path(self) -> Path:
        """The embedded index's folder."""
        return self.index_dir or self.thumbnails_dir.parent / "index"

    @property
    def feature_store_dir(self) -> Path:
        return self.features_dir or self.thumbnails_dir.parent / "features"

    @property
    def identity_store_path(self) -> Path:
        return self.identities.store or self.thumbnails_dir.parent / "identities.sqlite"

    @field_validator("milvus_uri", mode="before")
    @classmethod
    def _no_uri(cls, v):
        return v or None  # an unset ${VAR:-} in the YAML

    @field_validator("milvus_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "://" in v:
            u = urlparse(v)
            if u.scheme not in {"http", "https", "tcp"} or not u.hostname:
                raise ValueError(f"Milvus URI must be a .db file path or http(s)://host:port, got {v!r}")
            _ = u.port  # raises ValueError on a bad port
        elif not v.endswith(".db"):
            raise ValueError(f"a milvus-lite file must end in .db, got {v!r}")
        return v


class TopicSettings(StrictModel):
    crops: str = "pgr.crops"
    features: str = "pgr.features"
    identities: str = "pgr.identities"
    dead_letter: str = "pgr.deadletter"


class KafkaSecurity(StrictModel):
    """How the Kafka clients authenticate and encrypt (README: Security). PLAINTEXT: neither."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = Field(None, description="CA bundle that signed the brokers' certificates")

    @field_validator("sasl_mechanism", "username", "password", "ca_file", mode="before")
    @classmethod
    def _empty_is_none(cls, v):
        return v or None  # an unset ${VAR:-} in the YAML

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecurity:
        if self.protocol.startswith("SASL") and not (self.sasl_mechanism and self.username and self.password):
            raise ValueError(f"protocol {self.protocol} needs sasl_mechanism, username and password")
        return self


class TransportSettings(StrictModel):
    kind: Literal["inprocess", "kafka"] = "inprocess"
    bootstrap: str | None = None
    group_prefix: str = "pgr"
    session_timeout_ms: int = Field(10000, ge=1000)
    partitions: int = Field(4, ge=1, description="partitions of topics this system creates")
    security: KafkaSecurity = KafkaSecurity()
    queue_records: int = Field(
        256, ge=1, description="embedded bus: uncommitted records a topic holds before producers wait"
    )
    connect_timeout_s: float = Field(30.0, gt=0, description="how long to wait for a broker at start")
    instance_id: str | None = Field(
        None,
        description="static group membership: a restarted service with the same id takes its place at once",
    )
    delete_consumed: list[Literal["crops", "features"]] = Field(
        default_factory=list,
        description="topics whose records the stage reading them deletes from the broker once every consumer "
        "group with offsets on them has committed them: the broker then holds the backlog, not the history "
        "(for a broker that does not enforce retention, or to keep camera images no longer than the "
        "stages need them); a group that starts later reads only what is left",
    )
    delete_consumed_every_s: float = Field(5.0, gt=0, description="how often a stage deletes (at most)")

    @field_validator("instance_id")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None

    @model_validator(mode="after")
    def _bootstrap(self) -> TransportSettings:
        if self.kind == "kafka":
            if not self.bootstrap:
                raise ValueError("transport.bootstrap is required for kind: kafka")
            for server in self.bootstrap.split(","):
                host, _, port = server.strip().rpartition(":")
                if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                    raise ValueError(f"bad Kafka bootstrap server {server!r}: want host:port")
        return self


class MetricsSettings(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(9100, ge=0, le=65535, description="0 picks a free port")


class ServeSettings(StrictModel):
    """`pgr serve`: the operator's search API and web page (README: Operator search)."""

    host: str = Field("127.0.0.1", min_length=1, description="address to bind; loopback unless you mean it")
    port: Port = 8080
    users_file: Path | None = Field(
        None, description="accounts (`pgr user add`); default: users.json beside the thumbnails folder"
    )
    audit_log: Path | None = Field(
        None, description="append-only JSON lines; default: audit.jsonl beside the thumbnails folder"
    )
    sessions_file: Path | None = Field(
        None,
        description="logged-in sessions (SQLite), kept over restarts; default: beside the thumbnails folder",
    )
    retention_days: float | None = Field(
        30,
        gt=0,
        description="detections seen longer ago are deleted (row, thumbnail, features); null: keep",
    )
    retention_days_by_camera: dict[str, float | None] = Field(
        default_factory=dict,
        description="per camera id, overriding retention_days for that camera (null: keep its detections)",
    )
    retention_check_s: float = Field(3600, gt=0, description="how often the server applies the retention")
    preload: bool = Field(
        True,
        description="keep the index's vectors and the part features in memory (4.6 KB a detection with "
        "the default model): searches never wait for the disk",
    )
    preload_check_s: float = Field(60, gt=0, description="how often new segments are preloaded")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, le=MAX_IMAGE_BYTES)
    max_upload_pixels: int = Field(4096 * 4096, ge=64 * 64, le=MAX_IMAGE_PIXELS)
    upload_types: tuple[str, ...] = Field(
        ("image/jpeg", "image/png", "image/webp", "image/bmp"), min_length=1
    )
    session_hours: float = Field(8, gt=0, le=24 * 30, description="a login lasts this long")
    max_results: int = Field(1000, ge=1, le=16384, description="results one search may page through")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus metrics on metrics.host at this port; null: none"
    )

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _unset_port(cls, v):
        return None if v == "" else v  # an unset ${VAR:-} in the YAML

    @field_validator("retention_days_by_camera")
    @classmethod
    def _retention_per_camera(cls, v: dict[str, float | None]) -> dict[str, float | None]:
        for cam, days in v.items():
            if not is_camera_id(cam):
                raise ValueError(f"bad camera id {cam!r}: want 1-64 of A-Z a-z 0-9 _ . -")
            if days is not None and not days > 0:
                raise ValueError(f"retention of camera {cam}: want a number of days > 0, or null to keep")
        return v


class Settings(StrictModel):
    transport: TransportSettings = TransportSettings()
    topics: TopicSettings = TopicSettings()
    cameras: list[CameraSettings] = Field(default_factory=list)
    ingest: IngestSettings
    reid: ReidSettings
    matcher: MatcherSettings
    metrics: MetricsSettings = MetricsSettings()
    serve: ServeSettings = ServeSettings()

    @property
    def users_file(self) -> Path:
        return self.serve.users_file or self.matcher.thumbnails_dir.parent / "users.json"

    @property
    def audit_log(self) -> Path:
        return self.serve.audit_log or self.matcher.thumbnails_dir.parent / "audit.jsonl"

    @property
    def sessions_file(self) -> Path:
        return self.serve.sessions_file or self.matcher.thumbnails_dir.parent / "sessions.sqlite"

    @property
    def indexed_files(self) -> Path:
        """What `pgr index` indexed (path, camera, start, done): to resume, and to re-read frames from."""
        return self.matcher.thumbnails_dir.parent / "indexed_files.json"

    @model_validator(mode="after")
    def _sampling_within_end_gap(self) -> Settings:
        # crops sampled out never reach the matcher; shed crops do, as sightings, so shed_every_s may be
        # longer than the end gap
        gap, every = self.matcher.identities.end_gap_s, self.reid.sample_every_s
        if self.matcher.identities.enabled and every >= gap:
            raise ValueError(
                f"reid.sample_every_s ({every}) must be below matcher.identities.end_gap_s ({gap}): "
                "else the matcher ends a sampled tracklet between two of its extracted crops"
            )
        return self

    @model_validator(mode="after")
    def _unique_cameras(self) -> Settings:
        ids = [c.id for c in self.cameras]
        if len(ids) != len(set(ids)):
            raise ValueError(f"camera ids must be unique, got {ids}")
        return self


def load_settings(path: str | Path, overrides: dict | None = None, check_models: bool = True) -> Settings:
    """Read, expand and validate a YAML config; raise SettingsError with a readable message."""
    path = Path(path)
    raw = read_config(path, _pipeline_paths)
    # overrides name paths as the top file would
    raw = _pipeline_paths(deep_merge(raw, overrides or {}), path.resolve().parent)
    settings = validate_config(Settings, raw, str(path))
    if check_models:
        require_model_file(settings.ingest.detector_weights, "person detector (ingest.detector_weights)")
        reid = settings.reid
        if reid.model == "pgr-openvino":
            require_model_file(reid.ir, "OpenVINO re-ID IR (reid.ir)")
            require_model_file(reid.heads, "PGR heads (reid.heads)")
        else:
            if reid.weights is not None:
                require_model_file(reid.weights, "re-ID backbone (reid.weights)")
            if reid.model == "pgr" and reid.checkpoint is not None:
                require_model_file(reid.checkpoint, "PGR checkpoint (reid.checkpoint)")
    return settings


def _pipeline_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """The relative file paths of a pipeline config made absolute from `base`, its file's directory."""
    for section, key in [
        ("ingest", "detector_weights"),
        ("reid", "weights"),
        ("reid", "checkpoint"),
        ("reid", "ir"),
        ("reid", "heads"),
        ("matcher", "thumbnails_dir"),
        ("matcher", "features_dir"),
        ("matcher", "index_dir"),
        ("serve", "users_file"),
        ("serve", "audit_log"),
        ("serve", "sessions_file"),
    ]:
        if isinstance(raw.get(section), dict) and isinstance(raw[section].get(key), str):
            raw[section][key] = str(_rel(base, raw[section][key]))
    security = (
        (raw.get("transport") or {}).get("security") if isinstance(raw.get("transport"), dict) else None
    )
    if isinstance(security, dict) and isinstance(security.get("ca_file"), str):
        security["ca_file"] = str(_rel(base, security["ca_file"]))
    if isinstance(raw.get("matcher"), dict):
        uri = raw["matcher"].get("milvus_uri")
        if isinstance(uri, str) and uri and "://" not in uri:
            raw["matcher"]["milvus_uri"] = str(_rel(base, uri))
        ids = raw["matcher"].get("identities")
        if isinstance(ids, dict) and isinstance(ids.get("store"), str):
            ids["store"] = str(_rel(base, ids["store"]))
    for cam in raw.get("cameras") or []:
        if isinstance(cam, dict) and isinstance(cam.get("source"), str):
            src = cam["source"]
            if "://" not in src and not src.isdigit():
                cam["source"] = str(_rel(base, src))
    return raw


def read_config(path: str | Path, file_paths: FilePaths | None = None) -> dict[str, Any]:
    """A YAML config as a dict: ${VAR} expanded, merged over its `base:` file (and that over its own).

    `file_paths(raw, folder)`, when given, makes each file's relative paths absolute from its own folder
    before the files are merged.
    """
    path = Path(path)
    seen: list[Path] = []
    raw = _read_one(path, file_paths)
    while isinstance(raw.get("base"), str):
        seen.append(path.resolve())
        base = path.parent / raw.pop("base")
        if base.resolve() in seen:
            raise SettingsError(f"{path}: base: {base} is already in the chain {[str(p) for p in seen]}")
        if not base.is_file():
            raise SettingsError(f"{path}: base: config file not found: {base}")
        raw, path = deep_merge(_read_one(base, file_paths), raw), base
    if "base" in raw:
        raise SettingsError(f"{path}: base: must be a file name, got {raw['base']!r}")
    return raw


def validate_config(model: type[M], raw: Mapping[str, Any], source: str) -> M:
    """`raw` as a `model`; SettingsError with one line naming every wrong key (source: where it came from)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise SettingsError(f"{source}: {problems}") from None


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `over` on top; mappings present in both are merged key by key, anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _read_one(
    path: Path, file_paths: Callable[[dict[str, Any], Path], dict[str, Any]] | None
) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise SettingsError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: the top level must be a mapping")
    raw = _expand_env(raw)
    return raw if file_paths is None else file_paths(raw, path.resolve().parent)


def _rel(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else (base / q).resolve()


def _expand_env(v):
    if isinstance(v, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), v)
    if isinstance(v, dict):
        return {k: _expand_env(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_expand_env(x) for x in v]
    return v
