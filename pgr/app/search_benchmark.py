"""Operator-search benchmarks (figures for the notes; never run as tests).

Indexing:  python -m pgr.app.search_benchmark index [--video FILE] [--out FILE.json]
    `pgr index` (the function behind it) on a video into a fresh index with the default config: frames
    sampled, detections, wall time, frames/s and seconds of video per second.
Search:    python -m pgr.app.search_benchmark search --rows 10000 100000 [--queries 30] [--out FILE.json]
    Latency through the API (TestClient: multipart upload, decode, embed, the index, progressive
    re-ranking, JSON), median and p95, at each index size. The index holds the detections of a real clip
    (PETS 2009, first 60 frames) plus SYNTHETIC rows up to the size: each a real detection's instance
    vector with Gaussian noise (renormalised), a random camera of 4 and a random time in 30 days, and that
    detection's real part/pixel features (copied in the feature store). Queries are real crops of the clip.
    (Stage 1 and the whole search at a million rows, without HTTP: `pgr bench index|search`.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from pgr.app.benchmark import _machine
from pgr.paths import CONFIGS, assets_dir
from pgr.settings import Settings, load_settings


def _config(folder: Path) -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "base": str(CONFIGS / "embedded.yaml"),
        "cameras": [],
        "matcher": {
            "thumbnails_dir": str(folder / "thumbnails"),
            "features_dir": str(folder / "features"),
        },
        "metrics": {"port": 0},
        "serve": {"retention_days": None},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return load_settings(folder / "config.yaml")


def bench_index(video: Path) -> dict:
    """`pgr index` throughput on one video, fresh index."""
    import cv2

    from pgr.app.indexing import index_files
    from pgr.app.pipeline import build_extractor

    with tempfile.TemporaryDirectory() as tmp:
        settings = _config(Path(tmp))
        extractor = build_extractor(settings.reid)
        t0 = time.perf_counter()
        done = index_files(settings, [video], "bench", extractor, start=1.7e9, bars=False)[0]
        wall = time.perf_counter() - t0
    cap = cv2.VideoCapture(str(video))
    duration = cap.get(cv2.CAP_PROP_FRAME_COUNT) / cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return {
        "video": video.name,
        "video_seconds": round(duration, 1),
        "fps_sampled": done.fps,
        "frames": done.frames,
        "detections": done.detections,
        "wall_s": round(wall, 1),
        "frames_per_s": round(done.frames / wall, 2),
        "video_s_per_s": round(duration / wall, 2),
        "model": extractor.name,
    }


def _grow(settings: Settings, rows: int, model: str, seed: int = 0) -> None:
    """Fill the index up to `rows` with synthetic rows derived from the real ones (see the module doc)."""
    from matcher.feature_store import FeatureStore
    from matcher.index import IndexRow
    from matcher.open_index import open_index
    from pgr.messages import Detection

    m = settings.matcher
    index = open_index(m)
    real = index.get(index.all_ids())
    vectors = {d.detection_id: index.vector(d.detection_id) for d in real}
    dim = index.dim
    index.close()
    index = open_index(m, dim=dim, model=model)
    features = FeatureStore(m.feature_store_dir)
    stored = {d.detection_id: features.load(d.camera_id, d.detection_id) for d in real}
    rng = np.random.default_rng(seed)
    have, batch, crops = index.count(), [], []
    for n in range(have, rows):
        src = real[n % len(real)]
        v = vectors[src.detection_id] + rng.normal(0, 0.03, size=dim).astype(np.float32)
        cam = f"syn{n % 4}"
        det = Detection(
            detection_id=f"{cam}:synthetic:{n}:t{n}",
            camera_id=cam,
            timestamp=1.7e9 + float(rng.uniform(0, 30 * 86400)),
            frame_index=n,
            track_id=n,
            box=src.box,
            score=0.9,
        )
        batch.append(IndexRow(det, src.thumbnail, model, v / np.linalg.norm(v)))
        if stored[src.detection_id] is not None:
            crops.append((det.detection_id, stored[src.detection_id]))
        if len(batch) == 2000 or n == rows - 1:
            features.save_many(crops)
            index.upsert(batch)
            batch, crops = [], []
    index.close()


def bench_search(sizes: list[int], queries: int) -> list[dict]:
    """API search latency at each index size (ascending), `queries` uploads each."""
    from fastapi.testclient import TestClient

    from matcher.open_index import open_index
    from pgr.app.indexing import index_files
    from pgr.app.pipeline import build_extractor
    from pgr.app.web.app import create_app
    from pgr.app.web.auth import UserStore

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = _clip(assets_dir() / "video" / "pets2009_vtest.mp4", Path(tmp) / "clip.mp4")
        settings = _config(Path(tmp) / "var")
        extractor = build_extractor(settings.reid)
        index_files(settings, [clip], "gate", extractor, start=1.7e9, bars=False)
        index = open_index(settings.matcher)
        crops = [Path(d.thumbnail).read_bytes() for d in index.get(index.all_ids())]
        index.close()
        UserStore(settings.users_file).set("bench", "bench password", "viewer")
        for size in sorted(sizes):
            t0 = time.perf_counter()
            _grow(settings, size, extractor.name)
            fill_s = time.perf_counter() - t0
            app = create_app(settings, extractor=extractor, retention_thread=False)
            with TestClient(app) as client:
                token = client.post("/api/login", data={"username": "bench", "password": "bench password"})
                headers = {"Authorization": f"Bearer {token.json()['token']}"}
                count = client.get("/api/status", headers=headers).json()["detections"]
                times = []
                for i in range(queries + 2):  # the first two warm up
                    crop = crops[i % len(crops)]
                    t = time.perf_counter()
                    r = client.post(
                        "/api/search", files={"image": ("q.jpg", crop, "image/jpeg")}, headers=headers
                    )
                    elapsed = time.perf_counter() - t
                    assert r.status_code == 200, r.text
                    if i >= 2:
                        times.append(elapsed)
            times.sort()
            out.append(
                {
                    "detections": count,
                    "queries": len(times),
                    "median_s": round(statistics.median(times), 3),
                    "p95_s": round(times[min(len(times) - 1, int(0.95 * len(times)))], 3),
                    "n1": settings.matcher.n1,
                    "n2": settings.matcher.n2,
                    "fill_s": round(fill_s, 1),
                }
            )
            print(json.dumps(out[-1]), flush=True)
    return out


def _clip(source: Path, out: Path, frames: int = 60) -> Path:
    import cv2

    cap = cv2.VideoCapture(str(source))
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), cap.get(cv2.CAP_PROP_FPS), size)
    for _ in range(frames):
        ok, image = cap.read()
        if not ok:
            break
        writer.write(image)
    cap.release()
    writer.release()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgr.app.search_benchmark", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    idx = sub.add_parser("index")
    idx.add_argument("--video", default=str(assets_dir() / "video" / "pets2009_vtest.mp4"))
    idx.add_argument("--out")
    srch = sub.add_parser("search")
    srch.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    srch.add_argument("--queries", type=int, default=30)
    srch.add_argument("--out")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    # the load average says how much else ran on the machine (shared with training jobs while measured)
    result = {"machine": _machine(), "load_avg_1m_before": os.getloadavg()[0]}
    if args.what == "index":
        result["index"] = bench_index(Path(args.video))
    else:
        result["search"] = bench_search(args.rows, args.queries)
    result["load_avg_1m_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
