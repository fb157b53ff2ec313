"""Scale-out on this machine over Kafka (BENCHMARKS.md, "Scaling").

    pgr bench scaleout [--bootstrap HOST:PORT] [--workers 1 2] [--seconds 60] [--out FILE.json]

1. Crops: `--seconds` of each shared video (5 fps, every crop: no representatives) are ingested once into a
   fresh crops topic of 4 partitions.
2. Re-ID: for each count in `--workers`, that many `pgr run reid` processes in one consumer group are
   started on an empty topic; once the group is stable with all of them (models loaded), the crops are
   copied into it (spread over the partitions in turn) and the clock runs until the last feature record
   (its Kafka timestamp): features per second, and the CPU seconds the workers used meanwhile.
3. Matcher: `pgr run matcher` indexes the features of the first re-ID run the same way, once into a
   milvus-lite file and once into a `milvus-lite server` by URI (Milvus as a server): rows per second
   until the last row's `indexed_at`.

Without `--bootstrap` a noida-db broker is started for the run. The load average before and after every
step is part of the result: the machine is shared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from pgr.app.local_stack import (
    MilvusLiteServer,
    free_port,
    process_cpu_s,
    start_noida,
    stop_noida,
    topic_messages,
)
from pgr.metrics import PipelineMetrics
from pgr.paths import CONFIGS, assets_dir
from pgr.settings import load_settings

PARTITIONS = 4
SAMPLE_FPS = 5.0


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def write_config(folder: Path, name: str, **sections) -> Path:
    """A config over configs/kafka.yaml with the sections given (deep-merged), in `folder`."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": str(CONFIGS / "kafka.yaml"), **sections}))
    return path


def copy_topic(bootstrap: str, source: list, topic: str) -> None:
    """Write `source`'s records to `topic`, spread over its partitions in turn (not by key: the run measures
    the workers, not how a few cameras' keys hash)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=16 * 1024 * 1024)
    try:
        for i, r in enumerate(source):
            producer.send(topic, r.value, key=r.key, partition=i % PARTITIONS)
        producer.flush()
    finally:
        producer.close()


class _Group:
    """A consumer group seen from the broker: its members and its committed offsets."""

    def __init__(self, bootstrap: str, group: str) -> None:
        from kafka import KafkaAdminClient

        self.admin, self.group = KafkaAdminClient(bootstrap_servers=bootstrap), group

    def members(self) -> int:
        info = self.admin.describe_groups([self.group]).get(self.group) or {}
        if info.get("group_state") != "Stable":
            return 0
        return len(info.get("members") or [])

    def committed(self, topic: str) -> int:
        offsets = self.admin.list_group_offsets(self.group).get(self.group) or {}
        return sum(o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset > 0)

    def close(self) -> None:
        self.admin.close()


def _service(stage: str, config: Path, log: Path, metrics_port: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PGR_METRICS_PORT": str(metrics_port)}
    return subprocess.Popen(
        [sys.executable, "-m", "pgr.app.cli", "run", stage, "--config", str(config)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait(done, procs: list[subprocess.Popen], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"{what}: a process exited early (its log is in the work folder)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout_s:.0f}s")
        time.sleep(0.5)


def timed_trial(
    bootstrap: str, stage: str, config: Path, work: Path, name: str, count: int, source: list, topic: str
) -> dict:
    """Start `count` processes of `stage` on the empty `topic`; once the group is stable with all of them
    (models loaded), copy `source` into the topic and wait until the group has committed all of it.
    Returns when the copy started, the processes' CPU seconds from then, and the load averages."""
    settings = load_settings(config)
    group = f"{settings.transport.group_prefix}-{stage}"
    procs = [_service(stage, config, work / f"{name}-{i}.log") for i in range(count)]
    watch = _Group(bootstrap, group)
    try:
        _wait(lambda: watch.members() == count, procs, 900, f"{name}: {count} members joining")
        cpu0 = sum(process_cpu_s(p.pid) for p in procs)
        load_before, started = _load(), time.time()
        copy_topic(bootstrap, source, topic)
        _wait(lambda: watch.committed(topic) >= len(source), procs, 1800, f"{name}: consuming")
        cpu = sum(process_cpu_s(p.pid) for p in procs) - cpu0
        done = time.time()
    finally:
        _stop(procs)
        watch.close()
    return {"started": started, "done": done, "cpu_s": cpu, "load_before": load_before, "load_after": _load()}


def ingest_crops(work: Path, bootstrap: str, topic: str, seconds: float) -> int:
    """The shared videos' crops, every one, into `topic`; returns how many."""
    from pgr.app.pipeline import build_transport, run_ingest_stage

    videos = sorted((assets_dir() / "video").glob("*.mp4"))
    cameras = [
        {"id": v.stem[:32], "source": str(v), "fps": SAMPLE_FPS, "max_frames": int(seconds * 10)}
        for v in videos
    ]
    config = write_config(
        work,
        "ingest",
        transport={"bootstrap": bootstrap, "partitions": PARTITIONS},
        topics={"crops": topic},
        cameras=cameras,
        ingest={"representative_s": None},
        metrics={"port": 0},
    )
    settings = load_settings(config)
    transport = build_transport(settings)
    transport.ensure_topics([topic])
    published = run_ingest_stage(settings, transport, PipelineMetrics(), threading.Event())
    if any(n < 0 for n in published.values()):
        raise RuntimeError(f"ingest failed: {published}")
    return sum(published.values())


def reid_run(work: Path, bootstrap: str, crops: list, workers: int, threads: int, tag: str) -> dict:
    """`workers` re-ID processes in one group over a fresh copy of the crops."""
    from pgr.messages import decode_feature

    run = f"w{workers}t{threads}"
    topic, features = f"{tag}.crops.{run}", f"{tag}.features.{run}"
    config = write_config(
        work,
        f"reid-{run}",
        transport={"bootstrap": bootstrap, "group_prefix": f"{tag}{run}", "partitions": PARTITIONS},
        topics={"crops": topic, "features": features, "dead_letter": f"{tag}.dlq"},
        reid={"threads": threads},
        metrics={"port": 0},
    )
    trial = timed_trial(bootstrap, "reid", config, work, f"reid-{run}", workers, crops, topic)
    records = topic_messages(bootstrap, features)
    unique = {decode_feature(r.value).detection.detection_id for r in records}
    last = max(r.timestamp for r in records) / 1000
    span = last - trial["started"]
    return {
        "workers": workers,
        "openvino_threads_per_worker": threads or "every core",
        "crops": len(crops),
        "features": len(unique),
        "redelivered": len(records) - len(unique),
        "features_per_s": round(len(unique) / span, 1),
        "seconds": round(span, 1),
        "worker_cpu_s": round(trial["cpu_s"], 1),
        "cpu_ms_per_feature": round(1000 * trial["cpu_s"] / len(records), 1),
        "load_average_before": trial["load_before"],
        "load_average_after": trial["load_after"],
        "topic": features,
    }


def matcher_run(work: Path, bootstrap: str, features: list, uri: str | None, name: str, tag: str) -> dict:
    """One matcher process indexing a fresh copy of the features into Milvus at `uri` (None: the embedded
    index)."""
    from matcher.open_index import open_index

    topic = f"{tag}.features.m{name}"
    config = write_config(
        work,
        f"matcher-{name}",
        transport={"bootstrap": bootstrap, "group_prefix": f"{tag}m{name}", "partitions": PARTITIONS},
        topics={"features": topic, "identities": f"{tag}.identities.{name}", "dead_letter": f"{tag}.dlq"},
        matcher={
            "index": "milvus" if uri else "embedded",
            **({"milvus_uri": uri} if uri else {"index_dir": str(work / f"index-{name}")}),
            "collection": f"bench_{name}",
            "thumbnails_dir": str(work / f"thumbs-{name}"),
            "features_dir": str(work / f"features-{name}"),
            "identities": {"store": str(work / f"identities-{name}.sqlite")},
        },
        metrics={"port": 0},
    )
    trial = timed_trial(bootstrap, "matcher", config, work, f"matcher-{name}", 1, features, topic)
    settings = load_settings(config)
    index = open_index(settings.matcher)
    rows = index.get(index.all_ids(limit=1_000_000))
    index.close()
    span = max(r.indexed_at for r in rows) - trial["started"]
    return {
        "index": name,
        "uri": None if uri is None else uri if "://" in uri else "a milvus-lite .db file",
        "rows": len(rows),
        "rows_per_s": round(len(rows) / span, 1),
        "seconds": round(span, 1),
        "matcher_cpu_s": round(trial["cpu_s"], 1),
        "cpu_ms_per_row": round(1000 * trial["cpu_s"] / len(rows), 1),
        "identities": settings.matcher.identities.enabled,
        "load_average_before": trial["load_before"],
        "load_average_after": trial["load_after"],
    }


def run_scaleout(
    bootstrap: str | None, workers: list[int], seconds: float, threads: list[int] | None = None
) -> dict:
    """Every step above; the figures as a dict."""
    from pgr.app.benchmark import _machine

    work = Path(tempfile.mkdtemp(prefix="pgr-scaleout-"))
    broker, milvus = None, None
    tag = f"scale{int(time.time())}"
    try:
        if bootstrap is None:
            port = free_port()
            (work / "broker").mkdir()
            broker = start_noida(port, work / "broker")
            bootstrap = f"127.0.0.1:{port}"
        source = f"{tag}.crops"
        n = ingest_crops(work, bootstrap, source, seconds)
        crops = topic_messages(bootstrap, source)
        print(f"{n} crops in {source}", flush=True)
        reid = []
        for t in threads or [0]:
            for k in workers:
                reid.append(reid_run(work, bootstrap, crops, k, t, tag))
                print(reid[-1], flush=True)
        milvus = MilvusLiteServer(work / "milvus").start()
        features = topic_messages(bootstrap, reid[0]["topic"])
        server = milvus.uri
        matchers = [
            matcher_run(work, bootstrap, features, None, "embedded", tag),
            matcher_run(work, bootstrap, features, str(work / "lite.db"), "file", tag),
            matcher_run(work, bootstrap, features, server, "server", tag),
        ]
        for m in matchers:
            print(m, flush=True)
    finally:
        if milvus is not None:
            milvus.stop()
        if broker is not None:
            stop_noida(broker)
    shutil.rmtree(work, ignore_errors=True)  # kept when a step failed: its logs are there
    return {
        "machine": _machine(),
        "shared_machine_note": "2 cores shared with other jobs; see the load averages",
        "crops": n,
        "crops_from": f"{seconds} s of each shared video at {SAMPLE_FPS} fps, every crop",
        "partitions": PARTITIONS,
        "reid": reid,
        "matcher": matchers,
    }


def print_scaleout(result: dict) -> None:
    print(
        f"machine: {result['machine']} (shared); {result['crops']} crops, {result['partitions']} partitions"
    )
    for r in result["reid"]:
        print(
            f"re-ID x{r['workers']} (threads {r['openvino_threads_per_worker']}): {r['features_per_s']} "
            f"features/s, {r['cpu_ms_per_feature']} CPU ms per feature; load {r['load_average_before']} -> "
            f"{r['load_average_after']}"
        )
    for m in result["matcher"]:
        print(
            f"matcher into {m['index']} ({m['uri']}): {m['rows_per_s']} rows/s, {m['cpu_ms_per_row']} CPU ms "
            f"per row; load {m['load_average_before']} -> {m['load_average_after']}"
        )
