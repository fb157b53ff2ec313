"""Pipeline benchmarks (figures for the notes; never run as tests).

Embedded:  pgr bench [--config configs/embedded.yaml] [--out FILE.json]
    Runs the embedded demo's pipeline once, fresh index, and reports frames/s with the time split
    across decode, detection+tracking, feature extraction and indexing (sums of the stage histograms).
Kafka:     python -m pgr.app.benchmark kafka --bootstrap HOST:PORT [--seconds 60]
    Starts ingest, reid and matcher as three processes on configs/kafka.yaml with the PETS camera paced
    in real time, then reads each row's read_at (frame decoded) and indexed_at (row written) from the
    index: the latency from frame read to record searchable, median and p95.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from pgr.app.local_stack import free_port
from pgr.machine import describe_machine
from pgr.metrics import PipelineMetrics, counter_total
from pgr.paths import CONFIGS
from pgr.settings import load_settings


def _stage_sums(metrics: PipelineMetrics) -> dict[str, float]:
    sums: dict[str, float] = {}
    for s in metrics.stage_latency.collect()[0].samples:
        if s.name.endswith("_sum"):
            sums[s.labels["stage"]] = s.value
    return sums


def run_benchmark(config: str, out: str | None = None) -> int:
    """Embedded throughput on the config's cameras; prints a table, optionally writes JSON."""
    from pgr.app.pipeline import build_extractor, run_embedded

    settings = load_settings(config)
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings.model_copy(
            update={
                "matcher": settings.matcher.model_copy(
                    update={
                        "milvus_uri": f"{tmp}/bench.db",
                        "index_dir": Path(tmp) / "index",
                        "thumbnails_dir": Path(tmp) / "thumbs",
                        "features_dir": Path(tmp) / "features",
                    }
                )
            }
        )
        metrics = PipelineMetrics()
        extractor = build_extractor(settings.reid, shared=True)
        t0 = time.perf_counter()
        run = run_embedded(settings, metrics, stop=threading.Event(), extractor=extractor)
        wall = time.perf_counter() - t0
    frames = counter_total(metrics.frames_read)
    crops = sum(run.crops_per_camera.values())
    sums = _stage_sums(metrics)
    busy = sum(sums.values())
    result = {
        "machine": describe_machine(),
        "cameras": [c.source for c in settings.cameras],
        "sample_fps": [c.fps for c in settings.cameras],
        "frames": int(frames),
        "crops": crops,
        "wall_s": round(wall, 2),
        "frames_per_s": round(frames / wall, 2),
        "crops_per_s": round(crops / wall, 2),
        "stage_seconds": {k: round(v, 2) for k, v in sums.items()},
        "stage_share": {k: round(v / busy, 3) for k, v in sums.items()} if busy else {},
    }
    print(f"machine: {result['machine']}")
    print(
        f"{int(frames)} sampled frames, {crops} crops in {wall:.1f}s: "
        f"{result['frames_per_s']} frames/s, {result['crops_per_s']} crops/s (stages run concurrently)"
    )
    for k in ("decode", "detect", "extract", "index"):
        if k in sums:
            print(f"  {k:8s} {sums[k]:8.2f}s  {100 * sums[k] / busy:5.1f}% of stage time")
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
    return 0 if not run.errors else 1


def run_kafka_latency(bootstrap: str, seconds: float, out: str | None) -> int:
    """Frame-read-to-searchable latency over Kafka with three processes and a real-time paced camera."""
    from matcher.open_index import open_index

    work = Path(tempfile.mkdtemp(prefix="pgr-bench-"))
    cfg = yaml.safe_load((CONFIGS / "kafka.yaml").read_text())
    tag = f"bench{int(time.time())}"
    cfg["transport"]["bootstrap"] = bootstrap
    cfg["transport"]["group_prefix"] = tag
    cfg["topics"] = {"crops": f"{tag}.crops", "features": f"{tag}.features", "dead_letter": f"{tag}.dlq"}
    cfg["cameras"] = [dict(cfg["cameras"][0], realtime=True, max_frames=int(seconds * 10))]
    cfg["matcher"] = {"milvus_uri": str(work / "bench.db"), "thumbnails_dir": str(work / "thumbs")}
    cfg["metrics"]["port"] = "${PGR_METRICS_PORT:-0}"
    config = CONFIGS / f".{tag}.yaml"  # beside the shipped configs so relative paths resolve
    config.write_text(yaml.safe_dump(cfg))
    procs = {}
    try:
        for stage in ("matcher", "reid", "ingest"):
            env = {**os.environ, "PGR_METRICS_PORT": str(free_port())}
            procs[stage] = subprocess.Popen(
                [sys.executable, "-m", "pgr.app.cli", "run", stage, "--config", str(config)],
                env=env,
                stdout=(work / f"{stage}.log").open("w"),
                stderr=subprocess.STDOUT,
            )
        if procs["ingest"].wait(timeout=seconds + 300) != 0:
            print((work / "ingest.log").read_text()[-2000:], file=sys.stderr)
            return 1
        time.sleep(15)  # let the last batches through
        for stage in ("reid", "matcher"):
            procs[stage].send_signal(signal.SIGTERM)
            procs[stage].wait(timeout=60)
        settings = load_settings(config)
        index = open_index(settings.matcher)
        rows = index.get(index.all_ids())
        index.close()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        config.unlink(missing_ok=True)
    lat = np.array([r.indexed_at - r.read_at for r in rows])
    result = {
        "machine": describe_machine(),
        "records": len(rows),
        "camera": "pets2009_vtest.mp4 paced in real time, sampled at 2 fps",
        "latency_s": {
            "median": round(float(np.median(lat)), 3),
            "p95": round(float(np.percentile(lat, 95)), 3),
            "max": round(float(lat.max()), 3),
        },
    }
    print(json.dumps(result, indent=2))
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgr.app.benchmark")
    sub = parser.add_subparsers(dest="mode", required=True)
    emb = sub.add_parser("embedded")
    emb.add_argument("--config", default=str(CONFIGS / "embedded.yaml"))
    emb.add_argument("--out")
    kafka = sub.add_parser("kafka")
    kafka.add_argument("--bootstrap", required=True)
    kafka.add_argument("--seconds", type=float, default=60.0, help="seconds of video to stream")
    kafka.add_argument("--out")
    args = parser.parse_args(argv)
    if args.mode == "embedded":
        return run_benchmark(args.config, args.out)
    return run_kafka_latency(args.bootstrap, args.seconds, args.out)


if __name__ == "__main__":
    sys.exit(main())
