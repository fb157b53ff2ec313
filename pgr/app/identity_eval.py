"""How well the live identities link people across cameras, on real multi-camera data (a command, not a test).

    python -m pgr.app.identity_eval replay --dataset dukemtmc [--bootstrap HOST:PORT] [--config FILE]
        [--minutes M --start S] [--speed 10] [--threshold T] [--instance-only] [--sample-every S]
        [--shed-after A --shed-every S] [--reid-process]
    python -m pgr.app.identity_eval calibrate --dataset dukemtmc [--config FILE] [--maps DIR] [--grid ...]
        [--merge-delta ...] [--sample-every ...] [--window ...] [--shared-camera-direct on off]
        [--modes pgr instance] [--jobs 2]
    python -m pgr.app.identity_eval topology --dataset dukemtmc      # camera topology from the training split
    python -m pgr.app.identity_eval memory --dataset dukemtmc        # the matcher's memory on a long stream
    python -m pgr.app.identity_eval search --dataset dukemtmc        # what sampling costs the search
    python -m pgr.app.identity_eval wrong-pairs --dataset dukemtmc   # which events made the wrong pairs

`replay` publishes a re-ID test set (query + gallery; training split with `--split train`) as one camera
stream per camera, in the order of the frame numbers in the file names (DukeMTMC: 60 fps, synchronised
across its 8 cameras; Market-1501: 25 fps per camera sequence, its 6 cameras laid end to end in sequence
order, so only roughly synchronised), paced at `--speed` times real time, as crop records over Kafka
through the pipeline's own re-ID and matcher stages (after one warm-up crop, so start-up is not latency).
A local track is one identity on one camera while its crops come at most `--track-gap` seconds apart. It
then scores the matcher's identities against the true ones over every crop (matcher/identity_quality.py)
and measures the latency from each local track's last crop being published to its identity decision at
its tracklet's end. Without `--bootstrap` it runs over a fresh noida-db broker of its own (on loopback, a
temporary folder) and reports that broker's CPU too.

`calibrate` picks the join threshold (and the bridge-merge margin) on the TRAINING split: the same records
(in replay order, features from the cache of pgr/app/identity_features.py, sampled as the re-ID stage
would with `--sample-every`) through the matcher's own tracklet and identity code for each point of the
grid; per matching mode and sampling the point with the best IDF1 among those with a pair precision of
at least `--min-precision` (the target's 0.9) wins. Never on a test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from matcher.identity_quality import identity_quality, percentile
from matcher.identity_service import IdentityService
from matcher.identity_store import IdentityStore
from pgr.images import decode_image, header_size
from pgr.machine import describe_machine
from pgr.messages import CropRecord, Detection, FeatureRecord, decode_identity, encode_crop
from pgr.metrics import PipelineMetrics
from pgr.paths import CONFIGS
from pgr.settings import IdentitySettings, Settings, load_settings
from reid.extractor import FeatureExtractor
from reid.retrieval import RetrievalParams
from reid.sampling import TrackSampler, record_quality
from training.datasets import DATASETS

T = TypeVar("T")
_DUKE = re.compile(r"^(-?\d+)_c(\d+)_f(\d+)\.jpg$")
_MARKET = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_\d+\.jpg$")
BASE_TIME = 1_400_000_000.0  # the replay's clock starts here (a fixed unix time)
FPS = {"dukemtmc": 60.0, "market1501": 25.0}  # the frame rate the file names' frame numbers count in


@dataclass(frozen=True)
class ReplayCrop:
    path: Path
    pid: int
    camera: str
    frame: int
    time: float  # seconds from the dataset's first frame
    track: int = -1

    @property
    def detection_id(self) -> str:
        return f"{self.camera}:{self.frame}:t{self.track}"


def replay_crops(root: Path, dataset: str, split: str, track_gap_s: float) -> list[ReplayCrop]:
    """The split's crops in time order with their local tracks (junk and distractors left out)."""
    base = Path(root) / DATASETS[dataset]
    folders = ["bounding_box_train"] if split == "train" else ["query", "bounding_box_test"]
    crops: list[ReplayCrop] = []
    if dataset == "market1501":
        raw = []
        for folder in folders:
            for p in sorted((base / folder).glob("*.jpg")):
                m = _MARKET.match(p.name)
                if m and int(m.group(1)) > 0:
                    raw.append((p, int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))))
        # a camera's sequences one after another: each starts where the one before ended
        ends: dict[tuple[int, int], int] = {}
        for _, _, cam, seq, frame in raw:
            ends[(cam, seq)] = max(ends.get((cam, seq), 0), frame)
        offset = {}
        for cam, seq in sorted(ends):
            offset[(cam, seq)] = sum(ends[(c, s)] for c, s in ends if c == cam and s < seq)
        for p, pid, cam, seq, frame in raw:
            f = offset[(cam, seq)] + frame
            crops.append(ReplayCrop(p, pid, f"c{cam}", f, f / FPS["market1501"]))
    else:
        for folder in folders:
            for p in sorted((base / folder).glob("*.jpg")):
                m = _DUKE.match(p.name)
                if m and int(m.group(1)) > 0:
                    frame, fps = int(m.group(3)), FPS["dukemtmc"]
                    crops.append(ReplayCrop(p, int(m.group(1)), f"c{m.group(2)}", frame, frame / fps))
    crops = sorted({(c.camera, c.frame, c.pid): c for c in crops}.values(), key=lambda c: (c.time, c.camera))
    return assign_tracks(crops, track_gap_s)


def assign_tracks(crops: list[ReplayCrop], track_gap_s: float) -> list[ReplayCrop]:
    """One local track per identity, camera and continuous appearance (crops at most `track_gap_s` apart),
    numbered per camera in order of appearance."""
    last: dict[tuple[str, int], tuple[float, int]] = {}
    next_track: dict[str, int] = {}
    out = []
    for c in crops:
        key = (c.camera, c.pid)
        prev = last.get(key)
        if prev is None or c.time - prev[0] > track_gap_s:
            track = next_track.get(c.camera, 0)
            next_track[c.camera] = track + 1
        else:
            track = prev[1]
        last[key] = (c.time, track)
        out.append(ReplayCrop(c.path, c.pid, c.camera, c.frame, c.time, track))
    return out


def window(crops: list[ReplayCrop], minutes: float | None, start_min: float = 0.0) -> list[ReplayCrop]:
    """The crops of `minutes` of the stream from `start_min` minutes after its first crop (all: None)."""
    if minutes is None or not crops:
        return crops
    t0 = crops[0].time + 60 * start_min
    return [c for c in crops if t0 <= c.time < t0 + 60 * minutes]


def fold(crops: list[ReplayCrop], pieces: int, fps: float) -> list[ReplayCrop]:
    """The stream (in time order) cut into `pieces` equal stretches laid over each other, in the same order
    as `crops`: `pieces` times as many people a minute on the same cameras, a stand-in for a busier site
    made of training data alone. Piece k's tracks are numbered from k * 100,000 so no two pieces share one."""
    if pieces <= 1 or not crops:
        return crops
    t0, span = crops[0].time, (crops[-1].time - crops[0].time) / pieces
    out = []
    for c in crops:
        k = min(int((c.time - t0) // span), pieces - 1)
        shift = round(k * span * fps)  # whole frames, so time and frame number stay in step
        out.append(
            ReplayCrop(c.path, c.pid, c.camera, c.frame - shift, c.time - shift / fps, c.track + k * 100_000)
        )
    return out


def folded(
    crops: list[ReplayCrop], records: list[FeatureRecord], pieces: int, fps: float
) -> tuple[list[ReplayCrop], list[FeatureRecord]]:
    """`fold` for the crops and their feature records (same order), both sorted by the new stream time."""
    pairs = []
    for c, r in zip(fold(crops, pieces, fps), records, strict=True):
        det = dataclasses.replace(
            r.detection,
            detection_id=c.detection_id,
            timestamp=BASE_TIME + c.time,
            frame_index=c.frame,
            track_id=c.track,
        )
        pairs.append((c, dataclasses.replace(r, detection=det)))
    pairs.sort(key=lambda p: (p[0].time, p[0].camera))
    return [c for c, _ in pairs], [r for _, r in pairs]


def crop_record(c: ReplayCrop, read_at: float) -> CropRecord:
    """The crop as a camera's record; its box is the whole image (its size read from the JPEG header: the
    replay stands in for ingest, so it should cost the CPU it shares with the stages next to nothing)."""
    jpeg = c.path.read_bytes()
    (w, h), _ = header_size(jpeg)
    box = (0.0, 0.0, float(w), float(h))
    det = Detection(c.detection_id, c.camera, BASE_TIME + c.time, c.frame, c.track, box, 1.0, read_at)
    return CropRecord(det, jpeg)


def eval_overrides(args, workdir: Path, threshold: float) -> dict:
    """configs/embedded.yaml over Kafka (its embedded index), with fresh topics and stores in `workdir`."""
    run = f"eval{int(time.time())}"
    return {
        "transport": {"kind": "kafka", "bootstrap": args.bootstrap, "partitions": 1, "group_prefix": run},
        "topics": {n: f"{run}.{n}" for n in ("crops", "features", "identities", "dead_letter")},
        "reid": {
            name: value
            for name, value in (
                ("sample_every_s", args.sample_every),
                ("shed_after_s", args.shed_after),
                ("shed_every_s", args.shed_every),
                ("shed_hard_after_s", args.shed_hard_after),
                ("shed_hard_crops", args.shed_hard_crops),
                ("shed_hard_min_quality", args.shed_hard_min_quality),
                ("shed_hard_wait_crops", args.shed_hard_wait),
                ("shed_hard_wait_s", args.shed_hard_wait_s),
                ("shed_all_after_s", args.shed_all_after),
            )
            if value is not None
        },
        "matcher": {
            "thumbnails_dir": str(workdir / "thumbnails"),
            "features_dir": str(workdir / "features"),
            "identities": {
                # stream time ends tracklets (own camera, or any camera's); the wall-clock rule (nothing
                # arrived at all for idle_end_s) keeps the config's default, so a slow upstream batch
                # does not end tracklets
                **identity_overrides(args, threshold, None),
                **({} if args.merge_threshold is None else {"merge_threshold": args.merge_threshold}),
                "store": str(workdir / "identities.sqlite"),
            },
        },
    }


def identity_overrides(args, threshold: float, idle_end_s: float | None) -> dict:
    """matcher.identities for a replay (idle_end_s None: the config's)."""
    out = {"threshold": threshold, "instance_only": args.instance_only}
    if args.end_gap is not None:
        out["end_gap_s"] = args.end_gap
    if idle_end_s is not None:
        out["idle_end_s"] = idle_end_s
    return out


def publish(
    settings: Settings,
    crops: list[ReplayCrop],
    speed: float,
    stop: threading.Event,
    published: dict[str, float],
) -> None:
    """Publish the crops as their cameras would, at `speed` times real time; `published` gets each crop's
    publication (= frame read) time."""
    from pgr.app.pipeline import build_transport

    producer = build_transport(settings).producer()
    start, t0 = time.time(), crops[0].time
    try:
        for c in crops:
            if stop.is_set():
                return
            wait = start + (c.time - t0) / speed - time.time()
            if wait > 0:
                time.sleep(wait)
            rec = crop_record(c, time.time())
            producer.send(settings.topics.crops, encode_crop(rec), key=c.camera.encode())
            published[c.detection_id] = rec.detection.read_at
        producer.flush()
    finally:
        producer.close()


def run_replay_with_a_broker(args) -> dict:
    """`run_replay` over `--bootstrap`, or over a fresh local noida-db broker started and stopped here."""
    from pgr.app import local_stack

    if args.bootstrap:
        return run_replay(args)
    port = local_stack.free_port()
    with tempfile.TemporaryDirectory(prefix="pgr-replay-broker-") as data:
        broker = local_stack.start_noida(port, Path(data))
        try:
            args.bootstrap, args.broker_pid = f"127.0.0.1:{port}", broker.pid
            return run_replay(args)
        finally:
            local_stack.stop_noida(broker)


def run_replay(args) -> dict:
    from pgr.app.benchmark import _stage_sums
    from pgr.app.pipeline import (
        build_extractor,
        build_transport,
        extractor_threads,
        run_matcher_stage,
        run_reid_stage,
    )

    crops = replay_crops(args.data, args.dataset, args.split, args.track_gap)
    crops = window(crops, args.minutes, args.start)
    workdir = Path(tempfile.mkdtemp(prefix="pgr-identity-eval-"))
    base = load_settings(args.config, check_models=False).matcher.identities
    args.threshold = base.threshold if args.threshold is None else args.threshold
    overrides = eval_overrides(args, workdir, args.threshold)
    settings = load_settings(args.config, overrides)
    metrics = PipelineMetrics()
    extractor = build_extractor(settings.reid, shared=True)  # re-ID, matcher and publisher: one process
    ms_alone = extractor_ms_alone(extractor, crops)
    stop, published, reid_done = threading.Event(), threading.Event(), threading.Event()
    errors: list[str] = []
    reid_cpu: dict[str, float] = {}  # the re-ID process's CPU seconds, with --reid-process

    def guarded(fn, done: threading.Event | None) -> None:
        try:
            fn()
        except Exception as exc:
            errors.append(repr(exc))
            stop.set()
        finally:
            if done is not None:
                done.set()

    transport = build_transport(settings)

    def reid() -> None:
        if args.reid_process:  # `pgr run reid`, as deployed: its own process (and interpreter lock)
            reid_cpu["reid_process"] = reid_process(
                args, settings, overrides, workdir, metrics, stop, published
            )
        else:
            run_reid_stage(settings, transport, metrics, stop, published, extractor)

    def matcher() -> None:
        run_matcher_stage(settings, transport, metrics, stop, reid_done, extractor)

    threads = [
        threading.Thread(target=guarded, args=(reid, reid_done)),
        threading.Thread(target=guarded, args=(matcher, None)),
    ]
    for t in threads:
        t.start()
    warm_up(settings, crops[0], metrics, stop)
    t0, load_before = time.time(), os.getloadavg()
    cpu_before = own_cpu_s(), process_cpu_s(args.broker_pid, group=True)
    sent: dict[str, float] = {}
    guarded(lambda: publish(settings, crops, args.speed, stop, sent), published)
    replay_s = time.time() - t0
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    total_s = time.time() - t0
    cpu_s = {"replay": round(own_cpu_s() - cpu_before[0], 1), **reid_cpu}
    broker_after = process_cpu_s(args.broker_pid, group=True)
    if cpu_before[1] is not None and broker_after is not None:
        cpu_s["broker"] = round(broker_after - cpu_before[1], 1)
    store = IdentityStore(settings.matcher.identity_store_path)
    result = score_store(store, crops, sent)
    extracted = metrics.features_extracted._value.get()
    result.update(
        dataset=args.dataset,
        split=args.split,
        minutes=args.minutes,
        start_min=args.start,
        speed=args.speed,
        threshold=args.threshold,
        merge_threshold=settings.matcher.identities.merge_threshold,
        instance_only=args.instance_only,
        model=extractor.name,
        sample_every_s=settings.reid.sample_every_s,
        crops_extracted=int(extracted),
        crops_sampled_out=int(metrics.crops_sampled_out._value.get()),
        crops_shed=int(metrics.crops_shed._value.get()),
        crops_rescued=int(metrics.crops_rescued._value.get()),
        crops_rescue_dropped=int(metrics.crops_rescue_dropped._value.get()),
        shed_after_s=settings.reid.shed_after_s,
        shed_every_s=settings.reid.shed_every_s,
        shed_hard_after_s=settings.reid.shed_hard_after_s,
        shed_hard_crops=settings.reid.shed_hard_crops,
        shed_hard_min_quality=settings.reid.shed_hard_min_quality,
        shed_hard_wait_crops=settings.reid.shed_hard_wait_crops,
        shed_hard_wait_s=settings.reid.shed_hard_wait_s,
        shed_all_after_s=settings.reid.shed_all_after_s,
        sightings=int(metrics.sightings._value.get()),
        extracted_per_s=round(extracted / total_s, 1),
        reid_in_its_own_process=bool(args.reid_process),
        load_average_before=[round(v, 2) for v in load_before],
        load_average_after=[round(v, 2) for v in os.getloadavg()],
        cpu_cores=os.cpu_count(),
        machine=describe_machine(),
        replay_wall_s=round(replay_s, 1),
        total_wall_s=round(total_s, 1),
        stream_s=round(crops[-1].time - crops[0].time, 1),
        cameras=len({c.camera for c in crops}),
        identity_events_on_topic=count_topic(settings),
        # CPU seconds from the start of the timed replay to its end (the re-ID process: its whole life);
        # the broker's with --broker-pid
        cpu_s=cpu_s,
        # wall seconds the stages spent on their batches (extract: the re-ID model; index: the matcher's
        # whole write, identities included), warm-up included: how busy each stage was
        stage_busy_s={k: round(v, 1) for k, v in _stage_sums(metrics).items()},
        # the extractor alone before the replay (ms a crop): how fast the machine is today (the host's
        # load moves it; RESULTS.md, twelfth session), to set beside stage_busy_s['extract'] per crop
        extractor_ms_alone=ms_alone,
        extractor_threads=None
        if args.reid_process
        else extractor_threads(settings.reid.threads, shared=True),
    )
    store.close()
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        result["workdir"] = str(workdir)
    return result


def reid_process(
    args,
    settings: Settings,
    overrides: dict,
    workdir: Path,
    metrics: PipelineMetrics,
    stop: threading.Event,
    published: threading.Event,
) -> float:
    """The re-ID stage as a `pgr run reid` process over the same config: until the crops are published and
    its group has consumed them all, then stopped (it commits on SIGTERM). Its counts are added to
    `metrics` (features extracted, crops sampled out or shed), read from its /metrics before it stops.
    Returns the CPU seconds it used."""
    import yaml

    from pgr.app.local_stack import StageProcess, free_port, group_lag
    from pgr.app.pipeline import group

    config, port = workdir / "reid.yaml", free_port()
    own = {**overrides, "metrics": {"host": "127.0.0.1", "port": port}}
    config.write_text(yaml.safe_dump({"base": str(Path(args.config).resolve()), **own}))
    proc = StageProcess("reid", config, workdir / "reid.log", port=port)
    reid_group, crops_topic = group(settings, "reid"), settings.topics.crops
    try:
        while not (published.is_set() or stop.is_set()):
            if proc.proc.poll() is not None:
                raise RuntimeError(f"pgr run reid exited: {proc.tail()}")
            time.sleep(0.5)
        while not stop.is_set() and group_lag(args.bootstrap, reid_group, crops_topic) > 0:
            if proc.proc.poll() is not None:
                raise RuntimeError(f"pgr run reid exited: {proc.tail()}")
            time.sleep(0.5)
        time.sleep(2.0)  # its last batch: published after the commit that ended the lag
        metrics.features_extracted.inc(max(proc.total("pgr_features_extracted_total"), 0))
        metrics.crops_sampled_out.inc(max(proc.total("pgr_crops_sampled_out_total"), 0))
        metrics.crops_shed.inc(max(proc.total("pgr_crops_shed_total"), 0))
        metrics.crops_rescued.inc(max(proc.total("pgr_crops_rescued_total"), 0))
        metrics.crops_rescue_dropped.inc(max(proc.total("pgr_crops_rescue_dropped_total"), 0))
        return process_cpu_s(proc.proc.pid) or 0.0
    finally:
        proc.ensure_stopped()


def own_cpu_s() -> float:
    """CPU seconds this process (every thread) has used."""
    t = os.times()
    return t.user + t.system


def process_cpu_s(pid: int | None, group: bool = False) -> float | None:
    """CPU seconds process `pid` has used (with `group`, its process group's too: a broker's launcher and
    the broker it runs), None without a pid or when it cannot be read."""
    from pgr.app import local_stack

    if pid is None:
        return None
    try:
        return local_stack.group_cpu_s(pid) if group else local_stack.process_cpu_s(pid)
    except (OSError, IndexError):
        return None


WARMUP = "warmup"  # the camera of the one crop sent before the timed replay


def extractor_ms_alone(
    extractor: FeatureExtractor, crops: list[ReplayCrop], n: int = 64, batch: int = 16
) -> float:
    """Milliseconds a crop the extractor takes on its own: the first `n` crops in batches of `batch`, after
    one batch to warm it up (`reid.benchmark_extractors.crops_per_second`, one pass), while nothing else of
    the replay runs yet."""
    from reid.benchmark_extractors import crops_per_second

    images = [decode_image(c.path.read_bytes()) for c in crops[:n]]
    return round(1000 / crops_per_second(extractor.extract, images, batch, repeats=1), 2)


def warm_up(settings: Settings, first: ReplayCrop, metrics: PipelineMetrics, stop: threading.Event) -> None:
    """Send one crop (camera `warmup`, before the replay's first) and wait until the matcher indexed it: the
    stages are up (model loaded, index open), so start-up is not counted as latency. The scores leave the
    warm-up crop out. It is untracked, so no sampling or shedding rule can keep it from being extracted."""
    from pgr.app.pipeline import build_transport

    rec = crop_record(first, time.time())
    det = dataclasses.replace(
        rec.detection,
        detection_id=f"{WARMUP}:0:0",
        camera_id=WARMUP,
        timestamp=rec.detection.timestamp - 100,
        track_id=-1,
    )
    producer = build_transport(settings).producer()
    try:
        producer.send(settings.topics.crops, encode_crop(CropRecord(det, rec.jpeg)), key=WARMUP.encode())
        producer.flush()
    finally:
        producer.close()
    deadline = time.time() + 600
    while metrics.records_indexed._value.get() < 1:
        if stop.is_set() or time.time() > deadline:
            raise RuntimeError("the pipeline did not index the warm-up crop")
        time.sleep(0.2)


def count_topic(settings: Settings) -> int:
    """How many identity events the identities topic holds (read back over Kafka)."""
    from pgr.app.pipeline import build_transport

    consumer = build_transport(settings).consumer([settings.topics.identities], "eval-reader")
    n, empty = 0, 0
    try:
        while empty < 3:
            batch = consumer.poll(max_records=500, timeout_s=1.0)
            n += sum(1 for m in batch if decode_identity(m.value))
            empty = 0 if batch else empty + 1
    finally:
        consumer.close()
    return n


def score_store(
    store: IdentityStore, crops: list[ReplayCrop], published: dict[str, float] | None = None
) -> dict:
    """The identity quality of a finished run and its end-to-identity latencies.

    A crop the matcher never saw (sampled out by the re-ID stage) takes the identity of its local track's
    tracklet (the segment nearest in time): the tracker linked it, so the identity holds for it too. The
    latency of a local track runs from the publication of its last crop (`published`: detection id ->
    wall time; else the read time of the last crop the matcher saw) to the decision at its tracklet's end.
    """
    truth = {c.detection_id: c.pid for c in crops}
    read_at: dict[str, float] = {}
    arrived_at: dict[str, float] = {}
    rows = tracklet_rows(store)
    identity_of = {tid: ident or f"none:{tid}" for tid, ident, _, _, _ in rows}
    for tid, _, _, _, meta in rows:
        m = json.loads(meta)
        key = tid.split("+")[0]
        read_at[key] = max(read_at.get(key, 0.0), m["read_at"])
        arrived_at[key] = max(arrived_at.get(key, 0.0), m["arrived_at"])
    tracklet_of, inferred = tracklets_of_crops(rows, crops)
    predicted = {d: identity_of[tid] for d, tid in tracklet_of.items()}
    alone = 0
    for c in crops:
        if c.detection_id not in predicted:  # a crop no tracklet took counts as an identity of its own
            predicted[c.detection_id] = f"alone:{c.detection_id}"
            alone += 1
    q = identity_quality(truth, predicted)
    quality_stretches = quality_by_minutes(crops, truth, predicted)
    events = store.events()
    decided: dict[str, float] = {}
    for e in events:
        if e.ended:
            key = e.tracklet_id.split("+")[0]
            decided[key] = max(decided.get(key, 0.0), e.decided_at)
    track_end: dict[str, float] = {}
    if published is not None:
        for c in crops:
            key = f"{c.camera}:t{c.track}"
            if c.detection_id in published:
                track_end[key] = max(track_end.get(key, 0.0), published[c.detection_id])
    else:
        track_end = {k: v for k, v in read_at.items() if v > 0}
    track_latency = {k: decided[k] - end for k, end in track_end.items() if k in decided}
    latency = list(track_latency.values())
    parts = latency_parts(track_end, read_at, arrived_at, decided)
    ends_at = {f"{c.camera}:t{c.track}": c.time - crops[0].time for c in crops} if crops else {}
    by_minutes = latency_by_minutes(track_latency, ends_at)
    founded = sum(1 for e in events if e.kind == "created" and e.camera_id != WARMUP)
    return {
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in q.as_dict().items()},
        "founded_per_true": round(founded / q.true_identities, 3),
        "events": {k: sum(1 for e in events if e.kind == k) for k in sorted({e.kind for e in events})},
        "tracklets": len(rows),
        "crops_seen_by_matcher": len(crops) - inferred - alone,
        "crops_by_their_track": inferred,
        "crops_not_in_a_tracklet": alone,
        "end_to_identity_s": {
            "median": round(percentile(latency, 50), 3),
            "p95": round(percentile(latency, 95), 3),
            "n": len(latency),
        },
        "end_to_identity_parts": parts,
        "end_to_identity_by_10_minutes": by_minutes,
        "quality_by_10_minutes": quality_stretches,
        "input_counts": store.counts(),
    }


def tracklet_rows(store: IdentityStore) -> list[tuple]:
    """The store's tracklets (id, identity, first and last seen, meta), the warm-up crop's left out."""
    rows = store.db.execute(
        "SELECT tracklet_id, identity_id, first_seen, last_seen, meta FROM tracklets"
    ).fetchall()
    return [r for r in rows if not r[0].startswith(f"{WARMUP}:")]


def tracklets_of_crops(rows: list[tuple], crops: list[ReplayCrop]) -> tuple[dict[str, str], int]:
    """Each crop's tracklet (detection id -> tracklet id), and how many were inferred: the tracklet that
    saw the crop, else its local track's tracklet nearest in time (a crop the re-ID stage sampled out: the
    tracker linked it, so the tracklet holds it too). A crop no tracklet took is left out."""
    of: dict[str, str] = {}
    segments: dict[str, list[tuple[float, float, str]]] = {}
    for tid, _, first, last, meta in rows:
        segments.setdefault(tid.split("+")[0], []).append((first, last, tid))
        for det in json.loads(meta)["seen"]:
            of[det] = tid
    inferred = 0
    for c in crops:
        if c.detection_id in of:
            continue
        if segs := segments.get(f"{c.camera}:t{c.track}"):
            t = BASE_TIME + c.time
            of[c.detection_id] = min(segs, key=lambda s: max(s[0] - t, t - s[1], 0.0))[2]
            inferred += 1
    return of, inferred


def wrong_pairs_by_event(store: IdentityStore, crops: list[ReplayCrop], largest: int = 10) -> dict:
    """Which identity events put crops of different people together: the events replayed in order, each
    join, move or merge charged with the pairs of crops of different true identities it put into one
    identity (the tracklets' crops as scored: `tracklets_of_crops`). Pair precision weighs an identity by
    its crops squared, so a few events can carry most of its loss."""
    truth = {c.detection_id: c.pid for c in crops}
    tracklet_of, _ = tracklets_of_crops(tracklet_rows(store), crops)
    people: dict[str, Counter] = defaultdict(Counter)  # tracklet -> true identity -> crops
    for det, tid in tracklet_of.items():
        if det in truth:
            people[tid][truth[det]] += 1
    held: dict[str, Counter] = defaultdict(Counter)  # identity -> true identity -> crops

    def wrong(a: Counter, b: Counter) -> int:
        return sum(a.values()) * sum(b.values()) - sum(n * b[pid] for pid, n in a.items())

    by_kind: Counter = Counter()
    events: Counter = Counter()
    charged = []
    for e in store.events():
        if e.camera_id == WARMUP or e.kind == "confirmed":
            continue
        t = people[e.tracklet_id]
        if e.kind == "created":
            held[e.identity_id] += t
            continue
        if e.kind == "merged":
            n = wrong(held[e.previous_id], held[e.identity_id])
            held[e.identity_id] += held.pop(e.previous_id, Counter())
        else:  # joined or moved
            if e.kind == "moved":
                held[e.previous_id] -= t
            n = wrong(t, held[e.identity_id])
            held[e.identity_id] += t
        kind = f"{e.kind} {'at the end' if e.ended else 'early'}"
        by_kind[kind] += n
        events[kind] += 1
        charged.append((n, e))
    charged.sort(key=lambda x: (-x[0], x[1].seq))
    return {
        "wrong_pairs": sum(by_kind.values()),
        "by_kind": {k: {"wrong_pairs": by_kind[k], "events": events[k]} for k in sorted(by_kind)},
        "largest": [
            {
                "wrong_pairs": n,
                "kind": e.kind,
                "tracklet": e.tracklet_id,
                "identity": e.identity_id,
                "other": e.previous_id,
                "score": round(e.score, 3),
            }
            for n, e in charged[:largest]
        ],
    }


def quality_by_minutes(
    crops: list[ReplayCrop], truth: dict[str, int], predicted: dict[str, str], minutes: int = 10
) -> dict[str, dict[str, float]]:
    """IDF1 and pair precision over the crops of each `minutes` of the stream (pairs within it only), with
    its crops a minute: does precision hold where the stream is dense?"""
    t0 = crops[0].time if crops else 0.0
    out = {}
    for name, ids in stretches(((c.time - t0, c.detection_id) for c in crops), minutes).items():
        q = identity_quality({i: truth[i] for i in ids}, {i: predicted[i] for i in ids})
        out[name] = {
            "idf1": round(q.idf1, 4),
            "pair_precision": round(q.pair_precision, 4),
            "crops_a_minute": round(len(ids) / minutes, 1),
        }
    return out


def latency_by_minutes(
    latency: dict[str, float], ends_at: dict[str, float], minutes: int = 10
) -> dict[str, dict[str, float]]:
    """The end-to-identity latency (median, p95, n) of the local tracks that end in each `minutes` of the
    stream (`ends_at`: track -> its last crop's stream seconds from the first crop): is the tail a busy
    stretch, or does it grow with the run?"""
    by = stretches(((ends_at.get(k, 0.0), v) for k, v in latency.items()), minutes)
    return {
        name: {"median": round(percentile(vs, 50), 3), "p95": round(percentile(vs, 95), 3), "n": len(vs)}
        for name, vs in by.items()
    }


def stretches(items: Iterable[tuple[float, T]], minutes: int) -> dict[str, list[T]]:
    """(stream seconds, value) pairs grouped by `minutes` of stream, in time order, named "0-10", ..."""
    buckets: dict[int, list[T]] = {}
    for seconds, value in items:
        buckets.setdefault(int(seconds // (60 * minutes)), []).append(value)
    return {f"{b * minutes}-{(b + 1) * minutes}": vs for b, vs in sorted(buckets.items())}


def latency_parts(
    track_end: dict[str, float],
    read_at: dict[str, float],
    arrived_at: dict[str, float],
    decided: dict[str, float],
) -> dict[str, dict[str, float]]:
    """Where a local track's end-to-identity latency goes (wall seconds, median and p95 over the tracks,
    and the median over the slowest 5 %): `unextracted` = its last crop's publication less that of the
    last crop the matcher got (crops sampled out or shed at the end: time the latency does not pay);
    `transit` = the matcher's receipt of that crop less its publication (re-ID queue, extraction,
    Kafka); `after_arrival` = the decision less that receipt (waiting for the end rule, then deciding).
    latency = after_arrival + transit - unextracted."""
    keys = [k for k in track_end if k in decided and read_at.get(k, 0) > 0 and arrived_at.get(k, 0) > 0]
    if not keys:
        return {}
    latency = {k: decided[k] - track_end[k] for k in keys}
    slow = sorted(keys, key=latency.get)[int(0.95 * len(keys)) :]
    comps = {
        "unextracted": {k: track_end[k] - read_at[k] for k in keys},
        "transit": {k: arrived_at[k] - read_at[k] for k in keys},
        "after_arrival": {k: decided[k] - arrived_at[k] for k in keys},
    }
    return {
        name: {
            "median": round(percentile(list(v.values()), 50), 3),
            "p95": round(percentile(list(v.values()), 95), 3),
            "median_of_slowest_5pct": round(percentile([v[k] for k in slow], 50), 3),
        }
        for name, v in comps.items()
    }


def replay_records(
    args, crops: list[ReplayCrop], settings: Settings, split: list[ReplayCrop] | None = None
) -> tuple[list[FeatureRecord], str]:
    """Feature records of the crops as the re-ID stage would publish them, from the feature cache of the
    whole `split` they come from (pgr/app/identity_features.py: extracted once per dataset, split and
    model), and the model's name."""
    from pgr.app.identity_features import replay_features
    from pgr.app.pipeline import build_extractor

    split = crops if split is None else split
    extractor = build_extractor(settings.reid)
    heads = settings.reid.heads if settings.reid.model == "pgr-openvino" else settings.reid.checkpoint
    feats = replay_features([c.path for c in split], extractor, heads, maps=getattr(args, "maps", None))
    by_id = {c.detection_id: f for c, f in zip(split, feats, strict=True)}
    records = []
    for c in crops:
        r, f = crop_record(c, 0.0), by_id[c.detection_id]
        records.append(
            FeatureRecord(
                r.detection,
                extractor.name,
                f.instance,
                r.jpeg,
                f.parts,
                f.part_visibility,
                f.pixels,
                f.pixel_coords,
            )
        )
    return records, extractor.name


class _Discard:
    """A producer that drops what it is sent (offline runs read the events from the store)."""

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def offline_run(
    cfg: IdentitySettings,
    retrieval: RetrievalParams,
    records: list[FeatureRecord | Detection],
    store: IdentityStore | None = None,
    every: Callable[[IdentityService, int], None] | None = None,
) -> IdentityStore:
    """The matcher's own tracklet and identity code over `records` in order, without Kafka or an index
    (only stream time and the end of the records end a tracklet); the state in `store` (default: in
    memory). `every(service, i)` runs after each batch of 64 records."""
    store = store or IdentityStore(Path(":memory:"))
    service = IdentityService(cfg, retrieval, store, _Discard(), "identities", PipelineMetrics())
    for i in range(0, len(records), 64):
        service.add([r if isinstance(r, Detection) else (r, "") for r in records[i : i + 64]])
        if every is not None:
            every(service, i)
    service.finish()
    return store


def run_memory(args) -> dict:
    """The matcher's memory over a long stream (the training split's replay, offline, default config):
    tracklets and identities held, and the bytes Python allocated for them (tracemalloc), as it goes."""
    import tracemalloc

    split = replay_crops(args.data, args.dataset, "train", args.track_gap)
    crops = window(held_out(split, args.held_out), args.minutes, args.start)
    settings = load_settings(args.config, check_models=False)
    records, model = replay_records(args, crops, settings, split)
    gap = settings.matcher.identities.end_gap_s if args.end_gap is None else args.end_gap
    cfg = settings.matcher.identities.model_copy(update={"idle_end_s": 1e9, "end_gap_s": gap})
    points: list[dict] = []

    def sample(service: IdentityService, i: int) -> None:
        if i % 2048:
            return
        traced = tracemalloc.get_traced_memory()[0]
        n = len(service.tracklets.tracklets)
        points.append(
            {
                "stream_min": round(
                    (records[i].detection.timestamp - records[0].detection.timestamp) / 60, 1
                ),
                "tracklets_in_memory": n,
                "identities_in_memory": len(service.identities.members),
                "tracklets_stored": service.store.db.execute("SELECT count(*) FROM tracklets").fetchone()[0],
                "traced_mb": round(traced / 2**20, 2),
                "kb_per_tracklet": round(traced / max(n, 1) / 1024, 1),
            }
        )
        print(json.dumps(points[-1]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tracemalloc.start()
        try:
            store = offline_run(
                cfg,
                RetrievalParams.from_settings(settings.matcher),
                records,
                IdentityStore(Path(tmp) / "i.db"),
                sample,
            )
        finally:
            tracemalloc.stop()
        store.close()
    return {
        "dataset": args.dataset,
        "split": "train",
        "model": model,
        "window_s": cfg.window_s,
        "points": points,
    }


def sampled(
    records: list[FeatureRecord],
    every_s: float,
    end_gap_s: float = math.inf,
    hard_crops: int = 1,
    min_quality: float = 0.0,
    wait_crops: int = 3,
    wait_s: float = 0.0,
) -> list[FeatureRecord | Detection]:
    """The records the re-ID stage extracts with `reid.sample_every_s` (reid/sampling.py; all for 0). An
    interval of `end_gap_s` or more is shedding, which only sends sightings can make (its sampling would
    otherwise end tracklets between extracted crops): a track's first crop (and its first after `end_gap_s`)
    and one every `every_s`, every other crop a sighting (its Detection), as the matcher then gets them;
    infinite: hard shedding throughout (`reid.shed_hard_after_s`, keeping `hard_crops` of each tracklet, a
    6 s interval between them; with `min_quality`, each the first of at least that quality among the next
    `wait_crops` due or within `wait_s`: `reid.shed_hard_min_quality`)."""
    if every_s >= end_gap_s:
        hard = 2e-9 if math.isinf(every_s) else 0.0
        sampler = TrackSampler(
            0.0,
            shed_after_s=1e-9,
            shed_every_s=6.0 if math.isinf(every_s) else every_s,
            shed_hard_after_s=hard,
            gap_s=end_gap_s,
            hard_crops=hard_crops,
            hard_min_quality=min_quality,
            hard_wait_crops=wait_crops,
            hard_wait_s=wait_s,
        )
        return [
            r if sampler.decide(r.detection, quality=partial(record_quality, r)) == "extract" else r.detection
            for r in records
        ]
    sampler = TrackSampler(every_s)
    return [r for r in records if sampler.wants(r.detection)]


def _torch_threads(n: int) -> None:
    """A calibration worker's torch thread count (its share of the cores)."""
    import torch

    torch.set_num_threads(n)


def _calibration_row(job: tuple) -> dict:
    """One point of the calibration grid (run in a worker process)."""
    args, base, retrieval, records, crops, every, instance_only, threshold, delta, window, shared = job
    args.instance_only = instance_only
    overrides = identity_overrides(args, threshold, 1e9)  # offline: only stream time ends a tracklet
    overrides["merge_threshold"] = min(threshold + delta, 1.0)
    overrides["window_s"] = window
    overrides["shared_camera_direct"] = shared
    cfg = base.model_validate({**base.model_dump(), **overrides})
    kept = sampled(
        records,
        every,
        cfg.end_gap_s,
        args.shed_hard_crops,
        args.shed_hard_min_quality,
        args.shed_hard_wait,
        args.shed_hard_wait_s,
    )
    store = offline_run(cfg, retrieval, kept)
    score = score_store(store, crops)
    store.close()
    keys = (
        "idf1",
        "pair_precision",
        "pair_recall",
        "identities_per_true",
        "founded_per_true",
        "events",
        "quality_by_10_minutes",
    )
    return {
        "sample_every_s": every,
        "extracted": round(sum(isinstance(r, FeatureRecord) for r in kept) / len(records), 4),
        "instance_only": instance_only,
        "threshold": threshold,
        "merge_threshold": overrides["merge_threshold"],
        "window_s": window,
        "shared_camera_direct": shared,
        **{k: score[k] for k in keys},
    }


def run_calibration(args) -> dict:
    """Pick the join threshold (and the bridge-merge margin) with the best IDF1 on the TRAINING split, per
    matching mode and sampling interval (offline: the same records through the same matcher code)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pgr.app.pipeline import usable_cores

    split = replay_crops(args.data, args.dataset, "train", args.track_gap)
    crops = window(split, args.minutes, args.start)
    settings = load_settings(args.config, check_models=False)
    records, model = replay_records(args, crops, settings, split)
    crops, records = folded(crops, records, args.fold, FPS[args.dataset])
    modes = [m == "instance" for m in args.modes]
    retrieval = RetrievalParams.from_settings(settings.matcher)
    base = settings.matcher.identities
    shared = [v == "on" for v in args.shared_camera_direct] if args.shared_camera_direct else None
    jobs = [
        (args, base, retrieval, records, crops, every, m, t, d, w, sc)
        for every in args.sample_every
        for m in modes
        for t in args.grid
        for d in args.merge_delta
        for w in args.window or [base.window_s]
        for sc in shared or [base.shared_camera_direct]
    ]
    table = []
    # one job runs here; more run in fresh (spawned) processes: a forked child of a process whose torch and
    # OpenVINO thread pools are running can hang on a lock one of those threads held
    # each worker takes its share of the cores: torch's default (every core) in each would oversubscribe
    threads = max(1, usable_cores() // args.jobs)
    with ProcessPoolExecutor(
        args.jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_torch_threads,
        initargs=(threads,),
    ) as pool:
        for row in map(_calibration_row, jobs) if args.jobs == 1 else pool.map(_calibration_row, jobs):
            print(json.dumps(row), flush=True)
            table.append(row)
    best = {}
    for every in args.sample_every:
        for m in modes:
            rows = [r for r in table if r["instance_only"] == m and r["sample_every_s"] == every]
            precise = [r for r in rows if r["pair_precision"] >= args.min_precision] or rows
            top = max(precise, key=lambda r: (r["idf1"], r["threshold"], r["merge_threshold"], r["window_s"]))
            name = f"{'instance_only' if m else 'pgr'}@{every:g}s"
            keys = (
                "threshold",
                "merge_threshold",
                "window_s",
                "shared_camera_direct",
                "idf1",
                "pair_precision",
            )
            best[name] = {k: top[k] for k in keys}
    return {
        "dataset": args.dataset,
        "split": "train",
        "minutes": args.minutes,
        "start_min": args.start,
        "fold": args.fold,
        "model": model,
        "crops": len(crops),
        "held_out_identities": args.held_out,
        "grid": table,
        "best": best,
    }


def held_out(crops: list[ReplayCrop], ids: int) -> list[ReplayCrop]:
    """The crops of the last `ids` identities in identity order (training.train_map_heads.split_identities
    holds out the same ones); all for 0."""
    if ids <= 0:
        return crops
    keep = set(sorted({c.pid for c in crops})[-ids:])
    return [c for c in crops if c.pid in keep]


def run_search_trade(args) -> dict:
    """What sampling (`reid.sample_every_s`) costs the operator's search: the test split's queries against
    its gallery as indexed with every crop, and as indexed by the sampling re-ID stage (the gallery
    replayed as camera streams, in frame order); progressive retrieval with the config's settings; index
    rows and bytes stored per row (features of the feature store, thumbnail). Nothing is tuned here."""
    import torch

    from pgr.app.identity_features import replay_features
    from pgr.app.pipeline import build_extractor
    from reid.retrieval import GalleryFeatures, progressive_retrieval
    from training.evaluate import evaluate_rank
    from training.evaluate_model import rank_positions

    settings = load_settings(args.config, check_models=False)
    split = replay_crops(args.data, args.dataset, "test", args.track_gap)
    extractor = build_extractor(settings.reid)
    feats = replay_features([c.path for c in split], extractor, settings.reid.heads, maps=args.maps)
    queries = [i for i, c in enumerate(split) if c.path.parent.name == "query"]
    gallery = [i for i, c in enumerate(split) if c.path.parent.name != "query"]
    q = GalleryFeatures.from_crop_features([feats[i] for i in queries])
    params = RetrievalParams.from_settings(settings.matcher)
    rows = []
    for every in args.sample_every:
        sampler = TrackSampler(every)
        kept = [i for i in gallery if sampler.wants(crop_record(split[i], 0.0).detection)]
        g = GalleryFeatures.from_crop_features([feats[i] for i in kept])
        order = torch.cat(
            [
                progressive_retrieval(q.select(list(range(s, min(s + 64, len(q))))), g, params).indices
                for s in range(0, len(q), 64)
            ]
        )
        r = evaluate_rank(
            rank_positions(order),
            [split[i].pid for i in queries],
            [split[i].pid for i in kept],
            [split[i].camera for i in queries],
            [split[i].camera for i in kept],
        )
        feature_bytes = np.mean(
            [
                sum(
                    getattr(feats[i], k).nbytes
                    for k in ("instance", "parts", "part_visibility", "pixels", "pixel_coords")
                )
                for i in kept
            ]
        )
        rows.append(
            {
                "sample_every_s": every,
                "index_rows": len(kept),
                "rows_kept": round(len(kept) / len(gallery), 4),
                "feature_kb_per_row": round(float(feature_bytes) / 1024, 1),
                "thumbnail_kb_per_row": round(
                    float(np.mean([split[i].path.stat().st_size for i in kept])) / 1024, 1
                ),
                **{k: round(v, 4) for k, v in r.row().items()},
                "queries": r.num_valid_queries,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {"dataset": args.dataset, "split": "test", "model": extractor.name, "rows": rows}


def run_wrong_pairs(args) -> dict:
    """A diagnostic: the offline run of `calibrate` (one point: the config's matching, the records sampled
    with `--sample-every`) over a split, scored, with the wrong pairs laid to the events that made them
    (`wrong_pairs_by_event`). Choose nothing from a test split's."""
    split = replay_crops(args.data, args.dataset, args.split, args.track_gap)
    crops = window(split, args.minutes, args.start)
    settings = load_settings(args.config, check_models=False)
    records, model = replay_records(args, crops, settings, split)
    base = settings.matcher.identities
    threshold = base.threshold if args.threshold is None else args.threshold
    cfg = base.model_copy(update=identity_overrides(args, threshold, 1e9))  # offline: stream time ends them
    r = settings.reid
    kept = sampled(
        records,
        args.sample_every,
        cfg.end_gap_s,
        r.shed_hard_crops,
        r.shed_hard_min_quality,
        r.shed_hard_wait_crops,
        r.shed_hard_wait_s,
    )
    store = offline_run(cfg, RetrievalParams.from_settings(settings.matcher), kept)
    score = score_store(store, crops)
    blame = wrong_pairs_by_event(store, crops)
    store.close()
    keys = ("idf1", "pair_precision", "pair_recall", "identities_per_true", "events")
    return {
        "dataset": args.dataset,
        "split": args.split,
        "model": model,
        "sample_every_s": args.sample_every,
        "extracted": round(sum(isinstance(x, FeatureRecord) for x in kept) / len(records), 4),
        "threshold": cfg.threshold,
        "merge_threshold": cfg.merge_threshold,
        "shared_camera_direct": cfg.shared_camera_direct,
        **{k: score[k] for k in keys},
        **blame,
    }


def run_topology(args) -> int:
    """Learn the camera topology from the TRAINING split and write it as a config over the default."""
    from pgr.app.camera_topology import learn_topology, write_topology

    crops = replay_crops(args.data, args.dataset, "train", args.track_gap)
    topology = learn_topology(crops, margin_s=args.margin)
    out = args.out or CONFIGS / f"identities_{args.dataset}.yaml"
    write_topology(out, topology, args.dataset)
    print(json.dumps(topology, indent=1))
    print(f"written: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgr.app.identity_eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("replay", "calibrate", "topology", "memory", "search", "wrong-pairs"):
        p = sub.add_parser(name)
        p.add_argument("--dataset", choices=["dukemtmc", "market1501"], default="dukemtmc")
        p.add_argument("--data", type=Path, default=Path("data"))
        p.add_argument(
            "--config",
            type=Path,
            default=CONFIGS / "embedded.yaml",
            help="pipeline config (configs/identities_dukemtmc.yaml: the default with a camera topology)",
        )
        p.add_argument("--minutes", type=float, help="replay only this many minutes of the stream")
        p.add_argument("--start", type=float, default=0.0, help="... from this many minutes in")
        p.add_argument("--track-gap", type=float, default=6.0, help="seconds that split a local track")
        p.add_argument("--end-gap", type=float, help="matcher.identities.end_gap_s (default: the config's)")
        p.add_argument("--instance-only", action="store_true")
        p.add_argument("--out", type=Path)
    replay = sub.choices["replay"]
    replay.add_argument(
        "--bootstrap", help="Kafka broker HOST:PORT (default: a fresh noida-db of its own, its CPU reported)"
    )
    replay.add_argument("--split", choices=["test", "train"], default="test")
    replay.add_argument("--keep", action="store_true", help="keep the run's index, thumbnails and state")
    replay.add_argument("--speed", type=float, default=10.0, help="times real time")
    replay.add_argument(
        "--reid-process",
        action="store_true",
        help="run the re-ID stage as its own `pgr run reid` process, as deployed (default: a thread)",
    )
    replay.add_argument(
        "--threshold", type=float, help="join threshold (default: the config's, from `calibrate`)"
    )
    replay.add_argument(
        "--merge-threshold", type=float, help="bridge merges at or above this (default: the config's)"
    )
    replay.add_argument(
        "--sample-every",
        type=float,
        default=0.0,
        help="reid.sample_every_s: extract a track's crops this often",
    )
    replay.add_argument(
        "--broker-pid",
        type=int,
        help="also report the CPU seconds of this process and its process group (a local broker's)",
    )
    replay.add_argument(
        "--shed-after",
        type=float,
        help="reid.shed_after_s: load shedding for crops that waited longer (wall s; default: the config's)",
    )
    replay.add_argument(
        "--shed-every",
        type=float,
        help="reid.shed_every_s: the sampling while shedding (default: the config's)",
    )
    replay.add_argument(
        "--shed-hard-after",
        type=float,
        help="reid.shed_hard_after_s: only a tracklet's first crops when later (default: the config's)",
    )
    replay.add_argument("--shed-hard-crops", type=int, help="reid.shed_hard_crops (default: the config's)")
    replay.add_argument(
        "--shed-hard-min-quality", type=float, help="reid.shed_hard_min_quality (default: the config's)"
    )
    replay.add_argument(
        "--shed-hard-wait", type=int, help="reid.shed_hard_wait_crops (default: the config's)"
    )
    replay.add_argument(
        "--shed-hard-wait-s", type=float, help="reid.shed_hard_wait_s (default: the config's)"
    )
    replay.add_argument(
        "--shed-all-after",
        type=float,
        help="reid.shed_all_after_s: no crop extracted when later (default: the config's)",
    )
    wrong = sub.choices["wrong-pairs"]
    wrong.add_argument("--split", choices=["test", "train"], default="train")
    wrong.add_argument(
        "--sample-every",
        type=float,
        default=6.0,
        help="as in calibrate (default 6: shedding throughout, a track's first crop and one each 6 s)",
    )
    wrong.add_argument("--threshold", type=float, help="join threshold (default: the config's)")
    sub.choices["topology"].add_argument(
        "--margin", type=float, default=10.0, help="seconds off each least gap"
    )
    calibrate = sub.choices["calibrate"]
    calibrate.add_argument(
        "--shed-hard-crops",
        type=int,
        default=1,
        help="with --sample-every inf: the crops of each tracklet hard shedding keeps (reid.shed_hard_crops)",
    )
    calibrate.add_argument(
        "--shed-hard-min-quality",
        type=float,
        default=0.0,
        help="with --sample-every inf: reid.shed_hard_min_quality (0: a tracklet's first crops)",
    )
    calibrate.add_argument(
        "--shed-hard-wait", type=int, default=3, help="with --sample-every inf: reid.shed_hard_wait_crops"
    )
    calibrate.add_argument(
        "--shed-hard-wait-s",
        type=float,
        default=0.0,
        help="with --sample-every inf: reid.shed_hard_wait_s",
    )
    sub.choices["search"].add_argument("--sample-every", type=float, nargs="+", default=[0.0, 4.0])
    for name in ("calibrate", "memory", "search"):
        sub.choices[name].add_argument(
            "--maps",
            type=Path,
            help="backbone map cache of the dataset (training.map_cache): only the heads run",
        )
    calibrate.add_argument("--grid", type=float, nargs="+", default=[0.60, 0.64, 0.68, 0.72, 0.76, 0.80])
    calibrate.add_argument(
        "--merge-delta",
        type=float,
        nargs="+",
        default=[0.0],
        help="bridge merges at threshold + delta (1 or more: never)",
    )
    calibrate.add_argument(
        "--sample-every",
        type=float,
        nargs="+",
        default=[0.0],
        help="reid.sample_every_s values to compare (0: every crop; from the end gap up, shedding with "
        "sightings at that interval; inf: hard shedding throughout, a track's first crop and sightings)",
    )
    calibrate.add_argument(
        "--window",
        type=float,
        nargs="+",
        help="matcher.identities.window_s values to compare (default: the config's)",
    )
    calibrate.add_argument(
        "--modes", nargs="+", choices=["pgr", "instance"], default=["pgr", "instance"], help="matching"
    )
    calibrate.add_argument(
        "--shared-camera-direct",
        nargs="+",
        choices=["on", "off"],
        help="matcher.identities.shared_camera_direct values to compare (default: the config's)",
    )
    calibrate.add_argument(
        "--held-out",
        type=int,
        default=0,
        help="only the last N training identities (the validation ids a heads config held out, val_ids: "
        "for heads trained on the others; 0: all)",
    )
    calibrate.add_argument(
        "--min-precision",
        type=float,
        default=0.9,
        help="pick the best IDF1 among points with at least this pair precision (when there are any)",
    )
    calibrate.add_argument("--jobs", type=int, default=1, help="grid points run in parallel")
    calibrate.add_argument(
        "--fold",
        type=int,
        default=1,
        help="lay N equal stretches of the training stream over each other: N times as dense (a busier site)",
    )
    args = parser.parse_args(argv)
    if args.command == "topology":
        return run_topology(args)
    commands = {
        "replay": run_replay_with_a_broker,
        "calibrate": run_calibration,
        "memory": run_memory,
        "search": run_search_trade,
        "wrong-pairs": run_wrong_pairs,
    }
    run = commands[args.command]
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
