"""Benchmark the PGR similarities and progressive retrieval on CPU (or GPU): `python -m reid.benchmark_pgr`.

1. Features of a few hundred real crops (random boxes cut from frames of the PETS 2009 sample video) from
   the PGR model (ImageNet backbone, untrained part classifier unless --checkpoint is given).
2. s_pixel for one query against 30 gallery items, full-dimension and projected pixels.
3. A gallery of --gallery items made by tiling those features and perturbing every copy with noise, then
   progressive retrieval for --queries queries versus the trivial ensemble (on --trivial-queries queries
   only, extrapolated, since scoring the whole gallery with s_pixel is what PGR avoids).
4. Bytes stored per detection.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pgr.messages import CropFeatures
from pgr.model_files import require_model_file
from pgr.paths import assets_dir
from reid.pgr_extractor import PGRExtractor
from reid.pixel_projection import bytes_per_detection
from reid.retrieval import (
    GalleryFeatures,
    RetrievalParams,
    RetrievalResult,
    progressive_retrieval,
    trivial_ensemble,
)
from reid.similarity import s_ins, s_part, s_pixel

WEIGHT_FILES = {
    "mobilenetv2": "mobilenetv2_imagenet_features.pt",
    "efficientnet_lite0": "efficientnet_lite0_imagenet.pth",
}


def random_crops(video: Path, count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` random 2:1 boxes cut from frames spread over the video."""
    cap = cv2.VideoCapture(str(require_model_file(video, "benchmark video")))
    frames_total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 1
    rng = np.random.default_rng(seed)
    crops: list[np.ndarray] = []
    per_frame = 5
    for frame_index in np.linspace(0, frames_total - 1, num=-(-count // per_frame), dtype=int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(frame_index))
        ok, frame = cap.read()
        if not ok:
            continue
        fh, fw = frame.shape[:2]
        for _ in range(per_frame):
            h = int(rng.integers(fh // 5, fh * 2 // 3))
            w = h // 2
            y, x = int(rng.integers(0, fh - h)), int(rng.integers(0, fw - w))
            crops.append(frame[y : y + h, x : x + w].copy())
    cap.release()
    return crops[:count]


def timed(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> tuple[float, object]:
    """Median wall time in seconds of `repeats` calls (after an optional warm-up) and the last result."""
    result = fn() if warm_up else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def tiled_gallery(
    base: GalleryFeatures, size: int, noise: float, seed: int = 0, chunk: int = 1024
) -> GalleryFeatures:
    """`size` items: copy i is base item i % len(base), each vector perturbed by noise of norm ~`noise`."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(size) % len(base)
    out = base.select(rows)
    for start in range(0, size, chunk):
        block = slice(start, start + chunk)
        for name in ("instances", "parts", "pixels"):
            t = getattr(out, name)[block]
            jitter = torch.randn(t.shape, generator=gen) * (noise / t.shape[-1] ** 0.5)
            getattr(out, name)[block] = _unit(t + jitter).to(t.dtype)
    out.pixels[~out.pixel_mask] = 0
    out.ids = [f"crop{int(r)}-copy{i}" for i, r in enumerate(rows)]
    return out


def _row(*cells: object, widths: tuple[int, ...] = (46, 11, 11, 11)) -> str:
    first, *rest = cells
    return (
        "  "
        + f"{first!s:<{widths[0]}}"
        + "".join(f"{c!s:>{w}}" for c, w in zip(rest, widths[1:], strict=False))
    )


def bench_pixel(full: GalleryFeatures, small: GalleryFeatures) -> None:
    """s_pixel for query 0 against items 1..30, at both pixel dimensions."""
    print("\n[1] s_pixel, one query vs 30 gallery items (median of 20 runs)")
    print(_row("pixel features", "ms", "pairs/s"))
    scores = []
    for feats in (full, small):
        q, g = feats.select([0]), feats.select(range(1, 31))
        sec, sim = timed(
            lambda q=q, g=g: s_pixel(q.pixels[0], q.pixel_coords[0], q.pixel_mask[0], g.pixels, g.pixel_mask),
            20,
        )
        scores.append(torch.as_tensor(sim))
        print(
            _row(f"d={feats.pixels.shape[-1]} {feats.pixels.dtype}", f"{1000 * sec:.2f}", f"{30 / sec:,.0f}")
        )
    gap = (scores[0] - scores[1]).abs()
    print(f"  |difference| of the two s_pixel: mean {gap.mean():.4f}, max {gap.max():.4f}")


def bench_retrieval(base: GalleryFeatures, args: argparse.Namespace, device: torch.device) -> None:
    """Progressive retrieval on all queries, the trivial ensemble on a few, per-stage times."""
    print(f"\n[2] retrieval, {args.queries} queries vs a {args.gallery:,}-item gallery")
    gallery = tiled_gallery(base, args.gallery, args.noise).to(device)
    query = base.select(range(min(args.queries, len(base)))).to(device)
    print(
        f"  gallery = the {len(base)} real crops' features tiled {args.gallery / len(base):.0f}x, each copy"
    )
    print(f"  perturbed (noise norm {args.noise}); pixels d={base.pixels.shape[-1]} float16;")
    print(f"  queries = the first {len(query)} real crops (unperturbed)")
    params = RetrievalParams()
    prog_s, prog = timed(lambda: progressive_retrieval(query, gallery, params), 1)
    nt = min(args.trivial_queries, len(query))
    few = query.select(range(nt))
    triv_s, triv = timed(lambda: trivial_ensemble(few, gallery, params), 1, warm_up=False)
    assert isinstance(prog, RetrievalResult) and isinstance(triv, RetrievalResult)
    # stage costs of progressive retrieval, timed alone (same work as inside progressive_retrieval)
    cand1 = torch.topk(s_ins(query.instances, gallery.instances), params.n1, dim=1).indices
    cand2 = cand1[:, : params.n2]
    stages = {
        "  stage 0: s_ins, whole gallery": lambda: s_ins(query.instances, gallery.instances),
        f"  stage 1: s_part, top N1={params.n1}": lambda: s_part(
            query.parts, query.visibility, gallery.parts, gallery.visibility, index=cand1
        ),
        f"  stage 2: s_pixel, top N2={params.n2}": lambda: s_pixel(
            query.pixels,
            query.pixel_coords,
            query.pixel_mask,
            gallery.pixels,
            gallery.pixel_mask,
            index=cand2,
        ),
    }
    prog_q, triv_q = prog_s / len(query), triv_s / nt
    print(_row("method", "ms/query", "total s"))
    print(_row(f"progressive (N1={params.n1}, N2={params.n2})", f"{1000 * prog_q:.1f}", f"{prog_s:.2f}"))
    for name, fn in stages.items():
        sec, _ = timed(fn, 1, warm_up=False)
        print(_row(name, f"{1000 * sec / len(query):.1f}", f"{sec:.2f}"))
    print(_row(f"trivial ensemble (measured on {nt} queries)", f"{1000 * triv_q:.1f}", f"{triv_s:.2f}"))
    print(
        _row(
            f"trivial ensemble, extrapolated to {len(query)}",
            f"{1000 * triv_q:.1f}",
            f"{triv_q * len(query):.2f}",
        )
    )
    print(f"  speed-up of progressive over the trivial ensemble: {triv_q / prog_q:.1f}x")
    top1 = int((prog.indices[:nt, 0] == triv.indices[:, 0]).sum())
    top10 = statistics.mean(
        len(set(prog.indices[i, :10].tolist()) & set(triv.indices[i, :10].tolist())) / 10 for i in range(nt)
    )
    agree = f"same top-1 {top1}/{nt}, top-10 overlap {top10:.2f}"
    print(f"  agreement with the trivial ensemble on its {nt} queries: {agree}")
    ids = gallery.ids or []
    own = sum(ids[int(i)].split("-")[0] == f"crop{q}" for q, i in enumerate(prog.indices[:, 0].tolist()))
    print(f"  progressive top-1 is a copy of the query's own crop: {own}/{len(query)}")


def bench_bytes(full: list[CropFeatures], small: list[CropFeatures], pixel_dim: int) -> None:
    """Bytes stored per detection, with full-dimension pixels, projected pixels and without pixels."""
    print("\n[3] bytes stored per detection (instance f32, parts f16, visibility, pixels f16, int16 coords)")
    print(_row("layout", "mean", "min", "max"))
    layouts = {
        f"pixels d={full[0].instance.shape[0]} float16": [bytes_per_detection(f) for f in full],
        f"pixels d={pixel_dim} float16 (projected)": [bytes_per_detection(f) for f in small],
        "instance + parts only": [
            bytes_per_detection(CropFeatures(f.instance, f.parts, f.part_visibility)) for f in small
        ],
    }
    for name, values in layouts.items():
        print(_row(name, f"{statistics.mean(values):,.0f}", f"{min(values):,}", f"{max(values):,}"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Benchmark PGR similarities and progressive retrieval.")
    ap.add_argument("--assets", type=Path, default=assets_dir())
    ap.add_argument(
        "--backbone", default="mobilenetv2", choices=["mobilenetv2", "efficientnet_lite0", "resnet50"]
    )
    ap.add_argument("--checkpoint", type=Path, default=None, help="a trained PGR checkpoint")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--crops", type=int, default=300)
    ap.add_argument("--gallery", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--trivial-queries", type=int, default=4)
    ap.add_argument("--pixel-dim", type=int, default=128, help="projected pixel dimension in the gallery")
    ap.add_argument("--noise", type=float, default=0.3, help="norm of the noise added to each tiled copy")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    weights = args.assets / "weights" / WEIGHT_FILES[args.backbone] if args.backbone in WEIGHT_FILES else None
    print(
        f"PGR benchmark: backbone {args.backbone}, device {device}, torch threads {torch.get_num_threads()}"
    )
    if args.checkpoint is None:
        print("  no PGR checkpoint: ImageNet backbone + untrained (random) part classifier,")
        print("  so parts, visibility and foreground are arbitrary; timings and sizes are what this measures")

    crops = random_crops(args.assets / "video" / "pets2009_vtest.mp4", args.crops)
    extractors = []
    for dim in (None, args.pixel_dim):
        torch.manual_seed(0)  # the same random part classifier for both
        extractors.append(PGRExtractor(args.backbone, weights, args.checkpoint, str(device), pixel_dim=dim))
    start = time.perf_counter()
    full = extractors[0].extract(crops)
    extract_s = time.perf_counter() - start
    small = extractors[1].extract(crops)
    full_g = GalleryFeatures.from_crop_features(full, device=device)
    small_g = GalleryFeatures.from_crop_features(small, ids=[f"crop{i}" for i in range(len(small))])
    n_fg = full_g.pixel_mask.sum(1).float()
    ms = 1000 * extract_s / len(crops)
    print(f"  {len(crops)} random 2:1 crops from pets2009_vtest.mp4, extracted at {ms:.1f} ms/crop")
    fg = f"mean {n_fg.mean():.1f}, min {n_fg.min():.0f}, max {n_fg.max():.0f}"
    print(f"  foreground cells per crop (of 16x8): {fg}")
    bench_pixel(full_g, small_g.to(device))
    bench_retrieval(small_g, args, device)
    bench_bytes(full, small, args.pixel_dim)


if __name__ == "__main__":
    main()
