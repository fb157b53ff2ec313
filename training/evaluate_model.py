"""Evaluate a feature extractor on a re-ID benchmark: I, I+P, I+P+Px (progressive) and, on a subset of
queries, the trivial ensemble, under both readings of Eq. 4.

    python -m training.evaluate_model --data data --dataset market1501 [--checkpoint PGR.pt] [--out F.json]
        [--figures DIR]

On the first --trivial-queries queries it also scores the whole gallery with every metric: the trivial
ensemble (time and accuracy against progressive retrieval), each granularity's ranking on its own, and the
mean ranking difference between granularities (how far apart the ranks of the same true match are under
s_ins, s_part and s_pixel: large differences mean the granularities carry different evidence).

Without --checkpoint the model is the ImageNet MobileNetV2 with an untrained part classifier: a
"before training" reference, not a result of the method.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import fields, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from pgr.files import write_atomically
from pgr.machine import describe_machine
from pgr.messages import CropFeatures
from pgr.paths import REPO, asset_weights_dir
from pgr.settings import DEFAULT_OPENVINO_REID, MatcherSettings
from reid.openvino_backbone import PRECISIONS
from reid.openvino_pgr_extractor import OpenVinoPGRExtractor
from reid.pgr_extractor import PGRExtractor
from reid.pgr_model import PGRModel
from reid.retrieval import (
    GalleryFeatures,
    RetrievalParams,
    RetrievalResult,
    progressive_retrieval,
    trivial_ensemble,
)
from training.datasets import ReidDataset, Sample, load_dataset
from training.evaluate import RankResult, evaluate_samples
from training.map_cache import MapCache, open_cache


def _cache_key(extractor, checkpoint: Path | None, samples: list[Sample]) -> str:
    """Same model file, projection and inference precision, same image names and sizes: same features
    (DukeMTMC-reID and Occluded-Duke share their gallery, so it is extracted once)."""
    h = hashlib.sha1(extractor.name.encode())
    h.update(getattr(getattr(extractor, "backbone", None), "precision", "").encode())  # bf16 or f32 maps
    if checkpoint is not None:
        h.update(Path(checkpoint).read_bytes())
    for s in samples:
        h.update(f"{s.path.name}:{s.path.stat().st_size};".encode())
    return h.hexdigest()[:20]


def extract(
    extractor: PGRExtractor | OpenVinoPGRExtractor,
    samples: list[Sample],
    batch: int,
    what: str,
    cache: Path | None = None,
    checkpoint: Path | None = None,
    maps: MapCache | None = None,
) -> GalleryFeatures:
    """Features of every sample, read from / written to `cache` (a folder) when given. With `maps` (the
    OpenVINO backbone's cached maps of these images) only the heads run."""
    path = None
    if cache is not None:
        path = cache / f"{what}-{_cache_key(extractor, checkpoint, samples)}.pt"
        if path.is_file():
            print(f"features: {what} from {path}")
            return GalleryFeatures(**torch.load(path, weights_only=True))
    feats = []
    rows = None if maps is None else maps.rows([s.path.name for s in samples])
    for start in tqdm(range(0, len(samples), batch), desc=f"features: {what}", unit="batch"):
        if rows is not None:
            assert isinstance(extractor, OpenVinoPGRExtractor), "cached maps need the OpenVINO extractor"
            chunk = rows[start : start + batch]
            feats.extend(extractor.features_of_maps(maps.maps[chunk], maps.embeddings[chunk]))
            continue
        images = [cv2.imread(str(s.path)) for s in samples[start : start + batch]]
        feats.extend(extractor.extract(images))
    result = GalleryFeatures.from_crop_features(feats)
    if path is not None:
        tensors = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "ids"}
        write_atomically(path, lambda tmp: torch.save(tensors, tmp))
    return result


def rank_positions(order: torch.Tensor) -> np.ndarray:
    """The rank position of every gallery item, (Q, G) float32, from an order (Q, G) of gallery rows."""
    q, g = order.shape
    dist = np.empty((q, g), dtype=np.float32)
    np.put_along_axis(dist, order.numpy(), np.arange(g, dtype=np.float32)[None].repeat(q, 0), axis=1)
    return dist


def evaluate_result(result: RetrievalResult, query: list[Sample], gallery: list[Sample]) -> RankResult:
    """CMC and mAP of a ranking, its rank positions standing in for distances."""
    return evaluate_samples(rank_positions(result.indices), query, gallery)


def evaluate_in_memory(
    model: PGRModel,
    ds: ReidDataset,
    input_size: tuple[int, int],
    device: torch.device,
    batch: int = 64,
    queries: int = 0,
    pixel_dim: int | None = 64,
) -> dict[str, float]:
    """R1 / mAP of the instance ranking (I_*) and of progressive retrieval (PGR_*) for a model in memory,
    on the first `queries` queries (0: all); the extractor puts `model` in eval mode on `device`."""
    extractor = PGRExtractor(
        model.config.backbone,
        model=model,
        device=str(device),
        input_size=input_size,
        pixel_dim=pixel_dim,
        batch_size=batch,
    )
    query_samples = ds.query[:queries] if queries else ds.query
    gallery = extract(extractor, ds.gallery, batch, "gallery")
    query = extract(extractor, query_samples, batch, "query")
    base = RetrievalParams()  # stage 3 off, as RetrievalParams() has it
    metrics: dict[str, float] = {}
    for name, params in (("I", replace(base, n1=1, n2=1)), ("PGR", base)):
        r = evaluate_result(progressive_retrieval(query, gallery, params), query_samples, ds.gallery)
        metrics[f"{name}_R1"], metrics[f"{name}_mAP"] = r.rank(1), r.mAP
    return metrics


def foreground_stats(feats: GalleryFeatures) -> dict:
    """How much of each crop psi calls foreground: cells per crop, crops with none, and how often each part
    is visible (some cell labelled with it), over a feature set."""
    cells = feats.pixel_mask.sum(dim=1).float()
    return {
        "foreground_cells_mean": cells.mean().item(),
        "foreground_cells_median": cells.median().item(),
        "crops_without_foreground": (cells == 0).float().mean().item(),
        "part_visible_fraction": feats.visibility.float().mean(dim=0).tolist(),
    }


def _gallery_order(result: RetrievalResult, values: torch.Tensor) -> torch.Tensor:
    """Per-item values of a ranked result (Q, G) put back in gallery order."""
    return torch.empty_like(values).scatter_(1, result.indices, values)


def ranking_difference(
    scores: dict[str, torch.Tensor], query: list[Sample], gallery: list[Sample]
) -> dict[str, float]:
    """Mean |rank under A - rank under B| of the same true match (other camera), for each pair of
    (Q, G) score matrices; averaged over true matches, then over queries."""
    g_pid = np.array([s.pid for s in gallery])
    g_cam = np.array([s.camid for s in gallery])
    ranks = {
        name: rank_positions(torch.sort(sc, dim=1, descending=True, stable=True).indices)
        for name, sc in scores.items()
    }
    names = list(scores)
    out: dict[str, float] = {}
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            per_query = []
            for qi, q in enumerate(query):
                true = (g_pid == q.pid) & (g_cam != q.camid)
                if true.any():
                    per_query.append(np.abs(ranks[a][qi, true] - ranks[b][qi, true]).mean(dtype=np.float64))
            out[f"{a} vs {b}"] = float(np.mean(per_query))
    return out


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    ds = load_dataset(args.data, args.dataset)
    print(ds.summary())
    query_samples = ds.query[: args.queries] if args.queries else ds.query
    model_file = args.heads or args.checkpoint
    q_maps = g_maps = None
    if args.heads is not None:
        extractor = OpenVinoPGRExtractor(
            args.heads, args.ir, pixel_dim=args.pixel_dim, precision=args.precision
        )
        if args.map_cache is not None:
            q_maps, g_maps = open_cache(args.map_cache / "query"), open_cache(args.map_cache / "gallery")
    else:
        extractor = PGRExtractor(
            None if args.checkpoint else "mobilenetv2",
            None if args.checkpoint else asset_weights_dir() / "mobilenetv2_imagenet_features.pt",
            args.checkpoint,
            device=args.device,
            pixel_dim=args.pixel_dim,
        )
    t0 = time.perf_counter()
    gallery = extract(extractor, ds.gallery, args.batch, "gallery", args.cache, model_file, g_maps)
    query = extract(extractor, query_samples, args.batch, "query", args.cache, model_file, q_maps)
    extract_s = time.perf_counter() - t0
    print("gallery foreground:", foreground_stats(gallery))
    rows: dict[str, dict] = {}
    # Eq. 4 as printed; each variant names its reading. a1, a2 (and N1, N2) as chosen on validation data.
    base = RetrievalParams(part_score="eq4", a1=args.a1, a2=args.a2, n1=args.n1, n2=args.n2)
    stage3 = {"a3": args.a3, "k1": args.k1, "k2": args.k2}
    variants = {
        "I": replace(base, n1=1, n2=1),  # stage 0 only: s_ins ranking (N1=N2=1 re-ranks nothing else)
        "I+P (Eq. 4 as printed)": replace(base, n2=1),
        "I+P+Px progressive (Eq. 4 as printed)": base,
        "I+P (ISP reading)": replace(base, n2=1, part_score="isp"),
        "I+P+Px progressive (ISP reading)": replace(base, part_score="isp"),
        # stage 3: the final top n3 re-ranked by k-reciprocal neighbours, on 0277's / the model's instance
        # ranking alone (a1 = 1: the candidates' similarity to each other is s_ins) and on PGR's
        "I + re-ranking": replace(base, n1=args.n3, n2=1, a1=1.0, n3=args.n3, **stage3),
        "I+P+Px progressive + re-ranking (ISP reading)": replace(
            base, part_score="isp", n3=args.n3, **stage3
        ),
    }
    curves: dict[str, np.ndarray] = {}
    results: dict[str, RetrievalResult] = {}
    for name, params in variants.items():
        t = time.perf_counter()
        result = progressive_retrieval(query, gallery, params)
        seconds = time.perf_counter() - t
        r = evaluate_result(result, query_samples, ds.gallery)
        rows[name] = {**r.row(), "ms_per_query": 1000 * seconds / len(query_samples)}
        curves[name], results[name] = r.cmc, result
        print(f"{name:42s} {r}  {rows[name]['ms_per_query']:.1f} ms/query")
    n = min(args.trivial_queries, len(query_samples))
    sub = query.select(list(range(n)))
    subset: dict[str, dict] = {"queries": n}
    trivials: dict[str, RetrievalResult] = {}
    # untimed warm-up, so one-off first-call costs stay out of the first reading's time. It does not remove
    # the run-to-run noise of the trivial ensemble's time on a small VM (up to 4x measured, RESULTS.md).
    trivial_ensemble(query.select([0]), gallery, base)
    for reading, params in (("ISP reading", replace(base, part_score="isp")), ("Eq. 4 as printed", base)):
        t = time.perf_counter()
        trivial = trivials[reading] = trivial_ensemble(sub, gallery, params)
        trivial_ms = 1000 * (time.perf_counter() - t) / n
        t = time.perf_counter()
        progressive = progressive_retrieval(sub, gallery, params)
        progressive_ms = 1000 * (time.perf_counter() - t) / n
        r_triv = evaluate_result(trivial, query_samples[:n], ds.gallery)
        r_prog = evaluate_result(progressive, query_samples[:n], ds.gallery)
        subset[f"trivial vs progressive ({reading})"] = {
            "trivial_ms_per_query": trivial_ms,
            "progressive_ms_per_query": progressive_ms,
            "speedup": trivial_ms / progressive_ms,
            "trivial_R1": r_triv.rank(1),
            "progressive_R1": r_prog.rank(1),
            "trivial_mAP": r_triv.mAP,
            "progressive_mAP": r_prog.mAP,
        }
        print(
            f"{reading}, first {n} queries: trivial ensemble {trivial_ms:.0f} ms/query, {r_triv}; "
            f"progressive {progressive_ms:.1f} ms/query, {r_prog}; "
            f"speed-up {trivial_ms / progressive_ms:.0f}x"
        )
    # Each granularity alone over the whole gallery, from the trivial ensemble of Eq. 4 as printed (its
    # s_part has no instance term in it).
    printed = trivials["Eq. 4 as printed"]
    alone = {name: _gallery_order(printed, getattr(printed, name)) for name in ("s_ins", "s_part", "s_pixel")}
    for name, sc in alone.items():
        r = evaluate_samples(-sc.numpy(), query_samples[:n], ds.gallery)
        subset[f"{name} alone"] = r.row()
        print(f"{name} alone, first {n} queries: {r}")
    subset["mean ranking difference of true matches"] = ranking_difference(
        alone, query_samples[:n], ds.gallery
    )
    print("mean ranking difference of true matches:", subset["mean ranking difference of true matches"])
    rows["whole-gallery scoring on the first queries"] = subset
    if args.figures:
        _write_figures(
            args.figures,
            args.dataset,
            extractor,
            curves,
            results,
            query_samples,
            ds.gallery,
            query,
            gallery,
        )
    return {
        "dataset": args.dataset,
        "queries": len(query_samples),
        "gallery": len(ds.gallery),
        "model": extractor.name,
        "pixel_dim": args.pixel_dim,
        "extract_s": extract_s,
        "gallery_foreground": foreground_stats(gallery),
        "machine": f"{describe_machine()}, torch {torch.__version__}",
        "rows": rows,
    }


def _features_of(feats: GalleryFeatures, row: int) -> CropFeatures:
    keep = feats.pixel_mask[row]
    return CropFeatures(
        instance=feats.instances[row].numpy(),
        parts=feats.parts[row].numpy(),
        part_visibility=feats.visibility[row].numpy(),
        pixels=feats.pixels[row][keep].numpy(),
        pixel_coords=feats.pixel_coords[row][keep].numpy(),
    )


def _write_figures(
    out: Path,
    dataset: str,
    extractor: PGRExtractor | OpenVinoPGRExtractor,
    curves: dict[str, np.ndarray],
    results: dict[str, RetrievalResult],
    query_samples: list[Sample],
    gallery_samples: list[Sample],
    query: GalleryFeatures,
    gallery: GalleryFeatures,
) -> None:
    """CMC curves, learned parts on the first queries of distinct identities, and the pixel pairs s_pixel
    keeps between a query and its best-ranked true match and its best-ranked false match."""
    from training.figures import plot_cmc, plot_correspondences, plot_parts

    out.mkdir(parents=True, exist_ok=True)
    model_name = extractor.name
    plot_cmc(curves, out / f"cmc_{dataset}.png", f"{dataset}, {model_name}")
    seen, picks = set(), []
    for i, q in enumerate(query_samples):
        if q.pid not in seen:
            seen.add(q.pid)
            picks.append(i)
        if len(picks) == 8:
            break
    images = [cv2.imread(str(query_samples[i].path)) for i in picks]
    labels = extractor.model_output(images).labels
    plot_parts(
        images,
        list(labels.cpu().numpy()),
        out / f"parts_{dataset}.png",
        extractor.input_size,
        f"learned parts (psi: M > 1/2, most probable part), {dataset} queries, {model_name}",
    )
    ranking = results["I+P+Px progressive (ISP reading)"].indices
    pairs = []
    grid = tuple(labels.shape[1:])
    for qi in picks[:2]:
        q = query_samples[qi]
        ranked = [int(g) for g in ranking[qi, :200]]
        valid = [
            g for g in ranked if not (gallery_samples[g].pid == q.pid and gallery_samples[g].camid == q.camid)
        ]
        true = next((g for g in valid if gallery_samples[g].pid == q.pid), None)
        false = next((g for g in valid if gallery_samples[g].pid != q.pid), None)
        for g, what in ((true, "same person"), (false, "other person")):
            if g is None:
                continue
            pairs.append(
                (
                    cv2.imread(str(q.path)),
                    cv2.imread(str(gallery_samples[g].path)),
                    _features_of(query, qi),
                    _features_of(gallery, g),
                    f"{what}, rank {valid.index(g) + 1}",
                )
            )
    plot_correspondences(pairs, out / f"pixels_{dataset}.png", grid, extractor.input_size)
    print(f"figures written to {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate_model", description=__doc__)
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--dataset", default="market1501")
    ap.add_argument("--checkpoint", type=Path, help="an end-to-end PGR checkpoint (torch)")
    ap.add_argument("--heads", type=Path, help="PGR heads on the OpenVINO IR (reid.map_heads)")
    ap.add_argument("--ir", type=Path, default=DEFAULT_OPENVINO_REID, help="the IR the heads sit on")
    ap.add_argument("--map-cache", type=Path, help="the IR's cached maps of the dataset (query/, gallery/)")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="the IR's inference precision (with --map-cache: the one the maps were cached in)",
    )
    defaults = RetrievalParams()
    ap.add_argument("--a1", type=float, default=defaults.a1)
    ap.add_argument("--a2", type=float, default=defaults.a2)
    ap.add_argument("--n1", type=int, default=defaults.n1)
    ap.add_argument("--n2", type=int, default=defaults.n2)
    stage3 = MatcherSettings.model_fields
    ap.add_argument("--n3", type=int, default=stage3["n3"].default, help="stage 3 rows: candidates re-ranked")
    ap.add_argument("--a3", type=float, default=stage3["a3"].default)
    ap.add_argument("--k1", type=int, default=stage3["k1"].default)
    ap.add_argument("--k2", type=int, default=stage3["k2"].default)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pixel-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--queries", type=int, default=0, help="evaluate only the first N queries (0: all)")
    ap.add_argument(
        "--trivial-queries",
        type=int,
        default=200,
        help="queries also ranked by the trivial ensemble over the whole gallery (at least 1)",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        help="keep extracted features here and reuse them (keyed on model file and images, not on code: "
        "empty it after changing the extractor)",
    )
    ap.add_argument("--figures", type=Path, help="write CMC, parts and pixel-correspondence PNGs here")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.trivial_queries < 1:
        ap.error("--trivial-queries must be at least 1 (the whole-gallery comparison needs a query)")
    report = run(args)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
