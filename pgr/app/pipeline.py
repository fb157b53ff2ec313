"""Wiring the stages from settings: the same plain functions run embedded (threads over an in-process bus)
or as separate services over Kafka. Only the transport and the index (embedded, or Milvus by URI) differ."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from ingest.service import run_ingest
from matcher.feature_store import FeatureStore
from matcher.identity_service import IdentityService
from matcher.identity_store import IdentityStore
from matcher.index_check import check_rows_against_files
from matcher.open_index import open_index
from matcher.service import MatcherWorker
from matcher.thumbnails import ThumbnailStore
from matcher.tombstones import Tombstones
from pgr.consume_loop import LagReporter, consume_loop
from pgr.consumed_deletion import ConsumedDeleter
from pgr.metrics import PipelineMetrics
from pgr.settings import ReidSettings, Settings, TransportSettings
from pgr.transport import InProcessBus, KafkaTransport, Transport
from reid.extractor import FeatureExtractor, ImageNetMobileNetV2Extractor
from reid.retrieval import RetrievalParams
from reid.sampling import TrackSampler
from reid.service import ReidWorker

log = logging.getLogger(__name__)


def kafka_client_options(t: TransportSettings) -> dict[str, str]:
    """The kafka-python options for `transport.security` (empty for PLAINTEXT)."""
    sec, options = t.security, {}
    if sec.protocol != "PLAINTEXT":
        options["security_protocol"] = sec.protocol
    if sec.sasl_mechanism:
        options["sasl_mechanism"] = sec.sasl_mechanism
    if sec.username:
        options["sasl_plain_username"] = sec.username
    if sec.password:
        options["sasl_plain_password"] = sec.password.get_secret_value()
    if sec.ca_file:
        options["ssl_cafile"] = str(sec.ca_file)
    return options


def milvus_token(settings: Settings) -> str | None:
    """The Milvus user:password, when the config names one."""
    token = settings.matcher.milvus_token
    return token.get_secret_value() if token is not None else None


def build_transport(settings: Settings) -> Transport:
    """The in-process bus or a Kafka client, per `transport.kind`."""
    t = settings.transport
    if t.kind == "kafka":
        return KafkaTransport(
            t.bootstrap or "",
            session_timeout_ms=t.session_timeout_ms,
            partitions=t.partitions,
            instance_id=t.instance_id,
            connect_timeout_s=t.connect_timeout_s,
            options=kafka_client_options(t),
        )
    return InProcessBus(capacity=t.queue_records)


def build_extractor(cfg: ReidSettings, shared: bool = False) -> FeatureExtractor:
    """The feature extractor named in the config. `shared`: the re-ID stage shares its process (and the
    machine's cores) with the other stages (the embedded pipeline, `pgr index`, the identity replay); an
    automatic OpenVINO thread count (`reid.threads: 0`) then leaves them a core (`extractor_threads`)."""
    size = (cfg.input_height, cfg.input_width)
    if cfg.model == "imagenet-gap":  # settings guarantee mobilenetv2 and its weights
        return ImageNetMobileNetV2Extractor(cfg.weights, cfg.device, size)
    if cfg.model == "pgr-openvino":
        from reid.openvino_pgr_extractor import OpenVinoPGRExtractor

        return OpenVinoPGRExtractor(
            cfg.heads,
            cfg.ir,
            pixel_dim=cfg.pixel_dim,
            batch_size=cfg.batch_size,
            threads=extractor_threads(cfg.threads, shared),
            precision=cfg.precision,
        )
    from reid.pgr_extractor import PGRExtractor

    return PGRExtractor(
        cfg.backbone,
        cfg.weights,
        cfg.checkpoint,
        cfg.device,
        size,
        pixel_dim=cfg.pixel_dim,
        batch_size=cfg.batch_size,
    )


def extractor_threads(configured: int, shared: bool, cores: int | None = None) -> int:
    """OpenVINO threads for the extractor (0: every core, the latency hint). Configured > 0 wins. Sharing
    the cores: one fewer than the machine has (at least one), because one synchronous request on every
    core waits for its slowest thread, and another stage busy on a core makes that thread slow (Duke
    replay at 10x on 2 cores, its busiest 12 minutes: 23 % more crops extracted in time with 1 thread
    than with 2; RESULTS.md, IDENTITIES)."""
    if configured > 0 or not shared:
        return configured
    return max(1, (usable_cores() if cores is None else cores) - 1)


def usable_cores() -> int:
    """The cores this process may run on (a container's share, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_signature(extractor: FeatureExtractor, cfg: ReidSettings) -> tuple[str, int]:
    """The model name and instance dimension the extractor puts in feature records (one blank crop through
    it): what the matcher indexes, whatever record comes first."""
    blank = np.zeros((cfg.input_height, cfg.input_width, 3), np.uint8)
    return extractor.name, int(extractor.extract([blank])[0].instance.shape[0])


def consumed_deleter(
    settings: Settings, metrics: PipelineMetrics, stage: str, role: str
) -> ConsumedDeleter | None:
    """The stage's deleter of consumed records, when `transport.delete_consumed` names its input topic."""
    t = settings.transport
    if role not in t.delete_consumed:
        return None
    return ConsumedDeleter(metrics, stage, [getattr(settings.topics, role)], t.delete_consumed_every_s)


def group(settings: Settings, stage: str) -> str:
    return f"{settings.transport.group_prefix}-{stage}"


def run_ingest_stage(
    settings: Settings, transport: Transport, metrics: PipelineMetrics, stop: threading.Event
):
    """Ingest every configured camera; returns crops published per camera."""
    producer = transport.producer()
    try:
        return run_ingest(settings.cameras, settings.ingest, producer, settings.topics.crops, metrics, stop)
    finally:
        producer.close()


def run_reid_stage(
    settings: Settings,
    transport: Transport,
    metrics: PipelineMetrics,
    stop: threading.Event,
    upstream_done: threading.Event | None = None,
    extractor: FeatureExtractor | None = None,
) -> None:
    """Consume crops, publish features, until stopped (or drained once upstream is done)."""
    extractor = extractor or build_extractor(settings.reid)
    producer = transport.producer()
    r = settings.reid
    sampler = (
        TrackSampler(
            r.sample_every_s,
            shed_after_s=r.shed_after_s,
            shed_every_s=r.shed_every_s,
            shed_hard_after_s=r.shed_hard_after_s,
            gap_s=settings.matcher.identities.end_gap_s,
            hard_crops=r.shed_hard_crops,
            hard_min_quality=r.shed_hard_min_quality,
            hard_wait_crops=r.shed_hard_wait_crops,
            hard_wait_s=r.shed_hard_wait_s,
            shed_all_after_s=r.shed_all_after_s,
            skew_s=settings.matcher.identities.camera_skew_s,
        )
        if r.sample_every_s > 0 or r.shed_after_s > 0
        else None
    )
    topics = settings.topics
    worker = ReidWorker(
        extractor, producer, topics.features, topics.dead_letter, metrics, sampler, r.shed_rescue_tracks
    )
    consumer = transport.consumer([settings.topics.crops], group(settings, "reid"))
    try:
        consume_loop(
            consumer,
            worker.handle,
            stop,
            upstream_done,
            max_records=settings.reid.batch_size,
            lag=LagReporter(metrics, "reid"),
            deleter=consumed_deleter(settings, metrics, "reid", "crops"),
        )
    finally:
        producer.close()


def run_matcher_stage(
    settings: Settings,
    transport: Transport,
    metrics: PipelineMetrics,
    stop: threading.Event,
    upstream_done: threading.Event | None = None,
    extractor: FeatureExtractor | None = None,
) -> None:
    """Consume features and index them, until stopped (or drained once upstream is done). The index takes
    its dimension, and records their model, from the configured extractor, never from the first record."""
    m = settings.matcher
    model, dim = model_signature(extractor or build_extractor(settings.reid), settings.reid)
    index = open_index(m, dim=dim, model=model, token=milvus_token(settings))
    try:
        check_rows_against_files(index, m.thumbnails_dir, slack=m.batch_size)
    except Exception:
        index.close()
        raise
    producer = transport.producer()
    tombstones = Tombstones(m.identity_store_path)  # erasures on request, identities on or off
    store = IdentityStore(m.identity_store_path) if m.identities.enabled else None
    identities = None
    if store is not None:
        retrieval = RetrievalParams.from_settings(m)
        identities = IdentityService(
            m.identities, retrieval, store, producer, settings.topics.identities, metrics
        )
    worker = MatcherWorker(
        index,
        ThumbnailStore(m.thumbnails_dir),
        FeatureStore(m.feature_store_dir),
        producer,
        settings.topics.dead_letter,
        metrics,
        model=model,
        identities=identities,
        tombstones=tombstones,
        stop=stop,
    )
    consumer = transport.consumer([settings.topics.features], group(settings, "matcher"))
    try:
        consume_loop(
            consumer,
            worker.handle,
            stop,
            upstream_done,
            max_records=m.batch_size,
            linger_s=m.linger_s,
            tick=worker.tick,
            finish=worker.finish,
            lag=LagReporter(metrics, "matcher"),
            deleter=consumed_deleter(settings, metrics, "matcher", "features"),
        )
    finally:
        producer.close()
        index.close()
        tombstones.close()
        if store is not None:
            store.close()


@dataclass
class EmbeddedRun:
    """What an embedded run produced."""

    crops_per_camera: dict[str, int] = field(default_factory=dict)
    bus: InProcessBus | None = None
    errors: list[str] = field(default_factory=list)


def run_embedded(
    settings: Settings,
    metrics: PipelineMetrics,
    stop: threading.Event | None = None,
    extractor: FeatureExtractor | None = None,
) -> EmbeddedRun:
    """All three stages in one process over the in-process bus; returns when every source has ended
    and everything published has been indexed (or when `stop` is set)."""
    stop = stop or threading.Event()
    bus = InProcessBus(capacity=settings.transport.queue_records, stop=stop)
    run = EmbeddedRun(bus=bus)
    ingest_done, reid_done = threading.Event(), threading.Event()
    extractor = extractor or build_extractor(settings.reid, shared=True)

    def guarded(name: str, fn, done: threading.Event | None) -> None:
        try:
            out = fn()
            if name == "ingest":
                run.crops_per_camera = out
        except Exception as exc:
            log.exception("%s stage failed", name)
            run.errors.append(f"{name}: {exc}")
            stop.set()
        finally:
            if done is not None:
                done.set()

    threads = [
        threading.Thread(
            target=guarded,
            args=("ingest", lambda: run_ingest_stage(settings, bus, metrics, stop), ingest_done),
        ),
        threading.Thread(
            target=guarded,
            args=(
                "reid",
                lambda: run_reid_stage(settings, bus, metrics, stop, ingest_done, extractor),
                reid_done,
            ),
        ),
        threading.Thread(
            target=guarded,
            args=(
                "matcher",
                lambda: run_matcher_stage(settings, bus, metrics, stop, reid_done, extractor),
                None,
            ),
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return run
