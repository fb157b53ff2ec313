"""Evaluate a feature extractor on a re-ID benchmark: I, I+P, I+P+Px (progressive) and, on a subset of
queries, the trivial ensemble, under both readings of Eq. 4.

    python -m training.evaluate_model --data data --dataset market1501 [--checkpoint PGR.pt] [--out F.json]

Without --checkpoint the model is the ImageNet MobileNetV2 with an untrained part classifier: a
"before training" reference, not a result of the method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from reid.pgr_extractor import PGRExtractor
from reid.retrieval import (
    GalleryFeatures,
    RetrievalParams,
    RetrievalResult,
    progressive_retrieval,
    trivial_ensemble,
)
from training.datasets import Sample, load_dataset
from training.evaluate import RankResult, evaluate_rank

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("PGR_ASSETS", REPO.parent / "shared" / "assets"))


def extract(extractor: PGRExtractor, samples: list[Sample], batch: int, what: str) -> GalleryFeatures:
    feats = []
    for start in tqdm(range(0, len(samples), batch), desc=f"features: {what}", unit="batch"):
        images = [cv2.imread(str(s.path)) for s in samples[start : start + batch]]
        feats.extend(extractor.extract(images))
    return GalleryFeatures.from_crop_features(feats)


def ranks_of(result: RetrievalResult) -> np.ndarray:
    """A distance-like matrix from a ranking: the rank position of every gallery item."""
    q, g = result.indices.shape
    dist = np.empty((q, g), dtype=np.float32)
    np.put_along_axis(dist, result.indices.numpy(), np.arange(g, dtype=np.float32)[None].repeat(q, 0), axis=1)
    return dist


def evaluate_result(result: RetrievalResult, query: list[Sample], gallery: list[Sample]) -> RankResult:
    return evaluate_rank(
        ranks_of(result),
        np.array([s.pid for s in query]),
        np.array([s.pid for s in gallery]),
        np.array([s.camid for s in query]),
        np.array([s.camid for s in gallery]),
    )


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    ds = load_dataset(args.data, args.dataset)
    print(ds.summary())
    query_samples = ds.query[: args.queries] if args.queries else ds.query
    extractor = PGRExtractor(
        "mobilenetv2",
        ASSETS / "weights" / "mobilenetv2_imagenet_features.pt",
        args.checkpoint,
        device=args.device,
        pixel_dim=args.pixel_dim,
    )
    t0 = time.perf_counter()
    gallery = extract(extractor, ds.gallery, args.batch, "gallery")
    query = extract(extractor, query_samples, args.batch, "query")
    extract_s = time.perf_counter() - t0
    rows: dict[str, dict] = {}
    base = RetrievalParams()
    variants = {
        "I": replace(base, n1=1, n2=1),  # stage 0 only: s_ins ranking (N1=N2=1 re-ranks nothing else)
        "I+P (Eq. 4 as printed)": replace(base, n2=1),
        "I+P+Px progressive (Eq. 4 as printed)": base,
        "I+P (ISP reading)": replace(base, n2=1, part_global=True),
        "I+P+Px progressive (ISP reading)": replace(base, part_global=True),
    }
    for name, params in variants.items():
        t = time.perf_counter()
        result = progressive_retrieval(query, gallery, params)
        seconds = time.perf_counter() - t
        r = evaluate_result(result, query_samples, ds.gallery)
        rows[name] = {
            "R1": r.rank(1),
            "R5": r.rank(5),
            "R10": r.rank(10),
            "mAP": r.mAP,
            "ms_per_query": 1000 * seconds / len(query_samples),
        }
        print(f"{name:42s} {r}  {rows[name]['ms_per_query']:.1f} ms/query")
    n = min(args.trivial_queries, len(query_samples))
    sub = query.select(list(range(n)))
    t = time.perf_counter()
    trivial = trivial_ensemble(sub, gallery, base)
    trivial_ms = 1000 * (time.perf_counter() - t) / n
    t = time.perf_counter()
    progressive = progressive_retrieval(sub, gallery, base)
    progressive_ms = 1000 * (time.perf_counter() - t) / n
    r_triv = evaluate_result(trivial, query_samples[:n], ds.gallery)
    r_prog = evaluate_result(progressive, query_samples[:n], ds.gallery)
    rows["trivial ensemble vs progressive (first queries)"] = {
        "queries": n,
        "trivial_ms_per_query": trivial_ms,
        "progressive_ms_per_query": progressive_ms,
        "speedup": trivial_ms / progressive_ms,
        "trivial_R1": r_triv.rank(1),
        "progressive_R1": r_prog.rank(1),
        "trivial_mAP": r_triv.mAP,
        "progressive_mAP": r_prog.mAP,
    }
    print(
        f"trivial ensemble on {n} queries: {trivial_ms:.0f} ms/query, R1 {100 * r_triv.rank(1):.1f}; "
        f"progressive: {progressive_ms:.1f} ms/query, R1 {100 * r_prog.rank(1):.1f}; "
        f"speed-up {trivial_ms / progressive_ms:.0f}x"
    )
    return {
        "dataset": args.dataset,
        "queries": len(query_samples),
        "gallery": len(ds.gallery),
        "model": extractor.name,
        "pixel_dim": args.pixel_dim,
        "extract_s": extract_s,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate_model", description=__doc__)
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--dataset", default="market1501")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pixel-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--queries", type=int, default=0, help="evaluate only the first N queries (0: all)")
    ap.add_argument("--trivial-queries", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    report = run(args)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
