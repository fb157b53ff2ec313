"""Index and search at scale: the figures of BENCHMARKS.md, "Index" and "Search" (never run as tests).

    pgr bench index  [--rows 1000000] [--backend embedded|milvus-lite|milvus] [--features FILE.pt] ...
    pgr bench search [--rows 1000000] [--features FILE.pt] ...   (pgr bench --help: every option)

`index`: inserts `rows` detections through the index's own `upsert` (batches of 2,000, as the matcher
writes), then times stage 1 (the top `--top` ids, 1,000 = N1 by default) for held-out queries under four
filters (one camera and one day, one camera and a week, one camera, none), and checks every answer against
exact search over the same filtered rows (recall@top). Memory: what opening the index fresh and answering
every query added to the process's resident size (its own memory, and the pages of the index's files
that it mapped), and the files on disk.

`search`: the same rows with their part and pixel features in the feature store, then the whole operator
search (`matcher.search.search_features`: stage 1, parts of the N1 candidates, pixels of the N2, stage 3
on the top N3 (the matcher's default settings), metadata of the results) under the same filters, and,
alone, the load of the N1 candidates' parts and pixels: from the page cache, and from the disk (the
store's pages dropped from the cache first, 10 queries).

The rows are synthetic from real features: each is a noisy copy of one real crop's features (the instance
vector plus Gaussian noise of `--noise` per dimension, renormalised: cosine ~0.9 to its source, about what
two crops of one track score; its parts and pixels are the source's), on one of `--cameras` cameras chosen
at random, at a time that grows steadily over `--days` days (the order a live system indexes in). The real
crops: `--features FILE.pt`, a feature cache of `training.evaluate_model` (e.g. a dataset's gallery under
the default model), or by default the people of the PETS 2009 video, detected and embedded by the default
config's pipeline (cached under var/bench/). Queries are real crops held out from the sources.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pgr.paths import CONFIGS, REPO, assets_dir

if TYPE_CHECKING:
    from matcher.segments import SegmentStore

T0 = 1.7e9  # the first row's time (unix seconds)
BATCH = 2000
CHUNK = 10_000  # rows generated per random stream (the exact reference regenerates them the same way)


@dataclass
class RealFeatures:
    """Features of real crops by one model: the sources of the synthetic rows and the queries."""

    model: str
    instances: np.ndarray  # (n, d) float32
    parts: np.ndarray  # (n, p, d')
    visibility: np.ndarray  # (n, p) bool
    pixels: list[np.ndarray]  # n x (m_i, d'')
    pixel_coords: list[np.ndarray]  # n x (m_i, 2) int16
    origin: str

    def __len__(self) -> int:
        return len(self.instances)

    def crop(self, i: int):
        from pgr.messages import CropFeatures

        return CropFeatures(
            instance=self.instances[i],
            parts=self.parts[i],
            part_visibility=self.visibility[i],
            pixels=self.pixels[i],
            pixel_coords=self.pixel_coords[i],
        )


def load_real_features(path: Path | None, cache: Path) -> RealFeatures:
    """The real crops' features: a feature cache file, or the PETS video through the default pipeline."""
    if path is not None:
        import torch

        d = torch.load(path, map_location="cpu", weights_only=False)
        mask = d["pixel_mask"].numpy()
        n = mask.sum(1)
        return RealFeatures(
            model=str(d.get("model", "pgr-openvino")),
            instances=d["instances"].float().numpy(),
            parts=d["parts"].numpy(),
            visibility=d["visibility"].numpy().astype(bool),
            pixels=[d["pixels"][i, : n[i]].numpy() for i in range(len(n))],
            pixel_coords=[d["pixel_coords"][i, : n[i]].numpy().astype(np.int16) for i in range(len(n))],
            origin=f"{path.name} ({len(n)} crops)",
        )
    if not cache.is_file():
        _extract_pets(cache)
    z = np.load(cache, allow_pickle=False)
    ends = np.cumsum(z["pixel_counts"])
    starts = ends - z["pixel_counts"]
    return RealFeatures(
        model=str(z["model"]),
        instances=z["instances"],
        parts=z["parts"],
        visibility=z["visibility"],
        pixels=[z["pixels"][a:b] for a, b in zip(starts, ends, strict=True)],
        pixel_coords=[z["pixel_coords"][a:b] for a, b in zip(starts, ends, strict=True)],
        origin=f"pets2009_vtest.mp4 ({len(z['instances'])} crops, default config)",
    )


def _extract_pets(cache: Path) -> None:
    """Index the PETS video with the default config in a temporary folder and keep its crops' features."""
    import yaml

    from matcher.feature_store import FeatureStore
    from matcher.open_index import open_index
    from pgr.app.indexing import index_files
    from pgr.app.pipeline import build_extractor
    from pgr.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "base": str(CONFIGS / "embedded.yaml"),
            "cameras": [],
            "matcher": {
                "index": "embedded",
                "thumbnails_dir": f"{tmp}/thumbnails",
                "features_dir": f"{tmp}/f",
            },
            "metrics": {"port": 0},
        }
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(cfg))
        settings = load_settings(Path(tmp) / "config.yaml")
        extractor = build_extractor(settings.reid)
        video = assets_dir() / "video" / "pets2009_vtest.mp4"
        print(f"extracting real features from {video} (once; cached in {cache})", flush=True)
        index_files(settings, [video], "pets", extractor, start=T0, bars=False)
        index = open_index(settings.matcher)
        ids = index.all_ids(limit=1_000_000)
        index.close()
        rows = FeatureStore(settings.matcher.feature_store_dir).load_rows(ids)
        if rows is None or not rows.found.any():
            raise SystemExit("the default model gave no part/pixel features: cannot build the benchmark")
        counts = rows.pixel_mask.sum(1)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cache,
            model=extractor.name,
            instances=rows.instances,
            parts=rows.parts,
            visibility=rows.visibility,
            pixels=np.concatenate([rows.pixels[i, :c] for i, c in enumerate(counts)]),
            pixel_coords=np.concatenate([rows.pixel_coords[i, :c] for i, c in enumerate(counts)]),
            pixel_counts=counts,
        )


@dataclass(frozen=True)
class Layout:
    """How the synthetic rows are made (all of it reproducible from `seed`)."""

    rows: int
    cameras: int
    days: float
    noise: float
    sources: np.ndarray  # indices into RealFeatures that rows copy
    seed: int = 0

    def chunk(self, real: RealFeatures, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows [start, start + CHUNK): source index, camera, time, unit instance vector (float32)."""
        n = min(CHUNK, self.rows - start)
        rng = np.random.default_rng([self.seed, start])
        src = self.sources[rng.integers(0, len(self.sources), n)]
        cam = rng.integers(0, self.cameras, n).astype(np.int32)
        span = self.days * 86400.0
        ts = T0 + (start + np.arange(n) + rng.random(n)) * (span / self.rows)
        vec = real.instances[src] + rng.normal(0.0, self.noise, (n, real.instances.shape[1])).astype(
            np.float32
        )
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        return src, cam, ts, vec


def _det_id(cam: int, i: int) -> str:
    return f"cam{cam}:bench:{i}:t{i % 1000}"


def _index_rows(layout: Layout, real: RealFeatures, start: int, n: int):
    """The IndexRows (and source indices) of rows [start, start + n) (within one chunk)."""
    from matcher.index import IndexRow
    from pgr.messages import Detection

    base = start - start % CHUNK
    src, cam, ts, vec = layout.chunk(real, base)
    out = []
    for j in range(start - base, start - base + n):
        i = base + j
        det = Detection(
            _det_id(int(cam[j]), i), f"cam{cam[j]}", float(ts[j]), i, i % 1000, (0.0, 0.0, 64.0, 128.0), 0.9
        )
        out.append(IndexRow(det, f"/bench/thumbs/cam{cam[j]}/{i}.jpg", real.model, vec[j]))
    return out, src[start - base : start - base + n]


def _filters(layout: Layout, queries: int, seed: int = 1) -> dict[str, list[dict]]:
    """Per filter name, one filter per query: a random camera and a random day or week, a camera, none."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict]] = {"camera+day": [], "camera+week": [], "camera": [], "none": []}
    for _ in range(queries):
        cam = f"cam{rng.integers(0, layout.cameras)}"
        day = T0 + float(rng.integers(0, max(1, int(layout.days)))) * 86400.0
        week = T0 + float(rng.integers(0, max(1, int(layout.days) - 6))) * 86400.0
        out["camera+day"].append({"camera": cam, "since": day, "until": day + 86400.0})
        out["camera+week"].append({"camera": cam, "since": week, "until": week + 7 * 86400.0})
        out["camera"].append({"camera": cam})
        out["none"].append({})
    return out


def _exact(
    layout: Layout, real: RealFeatures, queries: np.ndarray, filters: dict[str, list[dict]], k: int
) -> dict[str, list[tuple[set[str], int]]]:
    """Exact top-k ids (and how many rows the filter selects) per filter and query: every row regenerated
    and scored, no index involved."""
    empty = (np.empty(0, np.float32), np.empty(0, np.int64), np.empty(0, np.int32))
    best = {name: [empty] * len(fs) for name, fs in filters.items()}
    selected = {name: [0] * len(fs) for name, fs in filters.items()}
    for start in range(0, layout.rows, CHUNK):
        _, cam, ts, vec = layout.chunk(real, start)
        scores = vec @ queries.T  # (n, Q)
        ids = start + np.arange(len(cam))
        for name, fs in filters.items():
            for q, f in enumerate(fs):
                mask = np.ones(len(cam), bool)
                if "camera" in f:
                    mask &= cam == int(f["camera"][3:])
                if "since" in f:
                    mask &= (ts >= f["since"]) & (ts <= f["until"])
                selected[name][q] += int(mask.sum())
                s, i, c = (
                    np.concatenate([a, b])
                    for a, b in zip(best[name][q], (scores[mask, q], ids[mask], cam[mask]), strict=True)
                )
                if len(s) > k:
                    top = np.argpartition(-s, k - 1)[:k]
                    s, i, c = s[top], i[top], c[top]
                best[name][q] = (s, i, c)
    return {
        name: [
            ({_det_id(int(c), int(i)) for i, c in zip(ids, cams, strict=True)}, selected[name][q])
            for q, (_, ids, cams) in enumerate(per_query)
        ]
        for name, per_query in best.items()
    }


def _rss_mib(kind: str = "VmRSS") -> float:
    """Resident memory (MiB): VmRSS all of it, RssAnon the process's own (heap, arrays), RssFile the pages of
    mapped files (the index's files: page cache, which the kernel may drop and read again)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _memory(before: dict[str, float], folder: Path) -> dict:
    """What opening the index (and store) and answering the queries added to the process, and the disk."""
    return {
        "rss_mib_added": round(_rss_mib() - before["VmRSS"]),
        "anon_mib_added": round(_rss_mib("RssAnon") - before["RssAnon"]),
        "file_pages_mib_added": round(_rss_mib("RssFile") - before["RssFile"]),
        "rss_mib_process": round(_rss_mib()),
        "disk_mib": round(_disk_mib(folder)),
    }


def _evict(folder: Path, store: SegmentStore | None = None) -> None:
    """Drop these files' pages from the page cache (a read then comes from the disk). Pages that `store`
    (open on this folder) has mapped are unmapped first: the kernel keeps a mapped page."""
    if store is not None:
        for seg in store.snapshot().segments:
            seg.release_pages()
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _disk_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _stats(times: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times)
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 2),
        "max_ms": round(ms[-1], 2),
    }


def _open(backend: str, folder: Path, dim: int | None, model: str | None, uri: str | None, milvus_index: str):
    from matcher.embedded_index import EmbeddedIndex
    from matcher.index import DetectionIndex

    if backend == "embedded":
        return EmbeddedIndex(folder / "index", dim=dim, model=model)
    if backend == "milvus-lite":
        return DetectionIndex(str(folder / "bench.db"), dim=dim, index_type=milvus_index)
    return DetectionIndex(uri, collection=f"bench_{int(time.time())}", dim=dim, index_type=milvus_index)


def _quiet() -> None:
    import logging

    for noisy in ("faiss", "milvus_lite", "ultralytics"):  # their INFO lines would bury the figures
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _machine() -> dict:
    from pgr.app.benchmark import _machine as machine

    return {"machine": machine(), "load_avg_1m_before": round(os.getloadavg()[0], 2)}


def _setup(args) -> tuple[RealFeatures, Layout, np.ndarray, Path]:
    real = load_real_features(
        Path(args.features) if args.features else None, REPO / "var" / "bench" / "pets_features.npz"
    )
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(real))
    held = order[: max(1, len(real) // 5)]  # queries: crops no row is a copy of
    layout = Layout(args.rows, args.cameras, args.days, args.noise, np.sort(order[len(held) :]), args.seed)
    queries = held[rng.integers(0, len(held), args.queries)]
    (REPO / "var").mkdir(exist_ok=True)
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pgr-bench-", dir=REPO / "var"))
    folder.mkdir(parents=True, exist_ok=True)
    return real, layout, queries, folder


def _reused(args, index_dir: Path, layout: Layout, real: RealFeatures) -> bool:
    """--reuse: query what a --keep run built in --dir, no insert (refused unless it was built from the same
    rows). Otherwise note how the rows are made, for a later --reuse."""
    made = {
        "rows": layout.rows,
        "cameras": layout.cameras,
        "days": layout.days,
        "noise": layout.noise,
        "seed": layout.seed,
        "real_crops": real.origin,
    }
    note = index_dir.parent / "bench_rows.json"
    if not args.reuse:
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(json.dumps(made))
        return False
    if not (index_dir / "MANIFEST.json").is_file() or not note.is_file():
        raise SystemExit(f"--reuse: no index in {index_dir} (build one with --keep --dir first)")
    if json.loads(note.read_text()) != made:
        raise SystemExit(f"--reuse: {index_dir} was built from other rows: {note.read_text()}")
    return True


def _need_disk(folder: Path, mib: float) -> None:
    free = shutil.disk_usage(folder).free / 2**20
    if free < mib * 1.2:
        raise SystemExit(
            f"{folder}: {free:.0f} MiB free, this run needs about {mib:.0f} MiB: use --dir or fewer --rows"
        )


def bench_index(args) -> dict:
    """Insert rate, stage-1 latency and recall per filter, memory: see the module doc."""
    if args.backend == "milvus" and not args.uri:
        raise ValueError("--backend milvus needs --uri http://host:port")
    _quiet()
    real, layout, query_rows, folder = _setup(args)
    dim = real.instances.shape[1]
    reuse = _reused(args, folder / "index", layout, real)
    if not reuse:
        _need_disk(folder, args.rows * (dim * 4 + 150) / 2**20)
    result = {**_machine(), "backend": args.backend, "rows": args.rows, "cameras": args.cameras}
    result["data"] = {"real_crops": real.origin, "model": real.model, "dim": dim, "noise": args.noise}
    try:
        index = _open(args.backend, folder, dim, real.model, args.uri, args.milvus_index)
        t_upsert, t0 = 0.0, time.perf_counter()
        for start in range(0, 0 if reuse else args.rows, BATCH):
            rows, _ = _index_rows(layout, real, start, min(BATCH, args.rows - start, CHUNK - start % CHUNK))
            t = time.perf_counter()
            refused = index.upsert(rows)
            t_upsert += time.perf_counter() - t
            assert not refused, refused
            if start and start % 100_000 == 0:
                print(f"  {start} rows, {start / t_upsert:.0f} rows/s in upsert", flush=True)
        wall = time.perf_counter() - t0
        result["insert"] = (
            "reused an index built before"
            if reuse
            else {
                "rows_per_s_upsert": round(args.rows / t_upsert),
                "rows_per_s_wall": round(args.rows / wall),
                "batch": BATCH,
            }
        )
        index.close()
        rss_before = {k: _rss_mib(k) for k in ("VmRSS", "RssAnon", "RssFile")}
        t = time.perf_counter()
        index = _open(args.backend, folder, None, None, args.uri, args.milvus_index)
        result["open_s"] = round(time.perf_counter() - t, 2)
        queries = real.instances[query_rows]
        filters = _filters(layout, args.queries)
        answers: dict[str, list[list[str]]] = {}
        result["search"] = {}
        for name, fs in filters.items():
            times, answers[name] = [], []
            for q, f in zip(queries, fs, strict=True):
                t = time.perf_counter()
                found = index.search_ids(q, args.top, **f)
                times.append(time.perf_counter() - t)
                answers[name].append(found.ids)
            result["search"][name] = _stats(times[2:] if len(times) > 4 else times)  # the first two warm up
            print(f"  {name}: {result['search'][name]}", flush=True)
        result["memory"] = _memory(rss_before, folder)
        index.close()
        exact = _exact(
            layout, real, queries / np.linalg.norm(queries, axis=1, keepdims=True), filters, args.top
        )
        for name in filters:
            recalls, sel = [], []
            for got, (want, n) in zip(answers[name], exact[name], strict=True):
                recalls.append(len(set(got) & want) / max(1, len(want)))
                sel.append(n)
            result["search"][name].update(
                {"recall": round(float(np.mean(recalls)), 4), "min_recall": round(min(recalls), 4)}
            )
            result["search"][name]["rows_selected_mean"] = round(float(np.mean(sel)))
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(folder, ignore_errors=True)
    result["top"] = args.top
    result["queries"] = args.queries
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    return result


def bench_search(args) -> dict:
    """The whole search (stage 1, parts, pixels, metadata) and the candidates' load: see the module doc."""
    from matcher.embedded_index import EmbeddedIndex
    from matcher.feature_store import FeatureStore
    from matcher.preload import preload
    from matcher.search import search_features
    from reid.retrieval import RetrievalParams

    _quiet()
    real, layout, query_rows, folder = _setup(args)
    dim = real.instances.shape[1]
    per_row = (
        dim * 4
        + 150
        + real.parts[0].nbytes
        + 100
        + float(np.mean([p.nbytes + c.nbytes for p, c in zip(real.pixels, real.pixel_coords, strict=True)]))
    )
    reuse = _reused(args, folder / "index", layout, real)
    if not reuse:
        _need_disk(folder, args.rows * per_row / 2**20)
    params = RetrievalParams.search_defaults()
    result = {**_machine(), "backend": "embedded", "rows": args.rows, "cameras": args.cameras}
    result["data"] = {"real_crops": real.origin, "model": real.model, "dim": dim, "noise": args.noise}
    result["params"] = {"n1": params.n1, "n2": params.n2, "n3": params.n3, "top_k": args.top_k}
    try:
        index = EmbeddedIndex(folder / "index", dim=dim, model=real.model)
        features = FeatureStore(folder / "features")
        t_write, t0 = 0.0, time.perf_counter()
        for start in range(0, 0 if reuse else args.rows, BATCH):
            rows, src = _index_rows(layout, real, start, min(BATCH, args.rows - start, CHUNK - start % CHUNK))
            crops = [(r.detection.detection_id, real.crop(int(s))) for r, s in zip(rows, src, strict=True)]
            t = time.perf_counter()
            assert not features.save_many(crops)
            assert not index.upsert(rows)
            t_write += time.perf_counter() - t
            if start and start % 100_000 == 0:
                print(f"  {start} rows, {start / t_write:.0f} rows/s (features + index)", flush=True)
        result["insert"] = (
            "reused an index and feature store built before"
            if reuse
            else {
                "rows_per_s_features_and_index": round(args.rows / t_write),
                "rows_per_s_wall": round(args.rows / (time.perf_counter() - t0)),
            }
        )
        index.close()
        features = None
        rss_before = {k: _rss_mib(k) for k in ("VmRSS", "RssAnon", "RssFile")}
        index = EmbeddedIndex(folder / "index")
        features = FeatureStore(folder / "features")
        if args.preload:  # as `pgr serve` does at start (serve.preload)
            done, took = preload(index, features)
            result["preload"] = {"gb": round(done / 1e9, 2), "s": round(took, 1)}
        filters = _filters(layout, args.queries)
        result["search"], result["load_candidates"] = {}, {}
        cold_candidates: dict[str, list[list[str]]] = {}
        for name, fs in filters.items():
            times, candidates = [], []
            for qi, f in zip(query_rows, fs, strict=True):
                query = real.crop(int(qi))
                t = time.perf_counter()
                hits = search_features(
                    index, query, real.model, args.top_k, features=features, params=params, **f
                )
                times.append(time.perf_counter() - t)
                assert hits
                candidates.append(index.search_ids(query.instance, params.n1, **f).ids)
            # the candidates' load alone, after every search of this filter (no query's rows just read)
            loads, loads_parts, loads_again = [], [], []
            for ids in candidates:
                t = time.perf_counter()
                features.load_rows(ids)
                loads.append(time.perf_counter() - t)
                t = time.perf_counter()
                features.load_rows(ids, pixels=False)
                loads_parts.append(time.perf_counter() - t)
                t = time.perf_counter()  # every page now mapped by this process: no read, no page fault
                features.load_rows(ids)
                loads_again.append(time.perf_counter() - t)
            warm = slice(2, None) if len(times) > 4 else slice(None)
            result["search"][name] = _stats(times[warm])
            result["load_candidates"][name] = {
                "parts_and_pixels": _stats(loads[warm]),
                "parts_only": _stats(loads_parts[warm]),
                "parts_and_pixels_in_memory": _stats(loads_again[warm]),
                "candidates_mean": round(float(np.mean([len(c) for c in candidates]))),
            }
            cold_candidates[name] = candidates[:10]
            print(
                f"  {name}: search {result['search'][name]}, load {result['load_candidates'][name]}",
                flush=True,
            )
        result["memory"] = _memory(rss_before, folder)  # before the cold reads unmap the features
        for name, lists in cold_candidates.items():  # last: from the disk, the store's pages dropped first
            cold = []
            for ids in lists:
                _evict(folder / "features", features.store)
                t = time.perf_counter()
                features.load_rows(ids)
                cold.append(time.perf_counter() - t)
            result["load_candidates"][name]["parts_and_pixels_from_disk"] = _stats(cold)
        index.close()
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(folder, ignore_errors=True)
    result["queries"] = args.queries
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    return result


def add_index_bench_options(bench: argparse.ArgumentParser) -> None:
    """The options of `pgr bench index` and `pgr bench search`."""
    bench.add_argument("--rows", type=int, default=1_000_000, help="index, search: detections indexed")
    bench.add_argument("--cameras", type=int, default=8, help="index, search: cameras they are spread over")
    bench.add_argument("--days", type=float, default=30.0, help="index, search: days they span")
    bench.add_argument("--queries", type=int, default=100, help="index, search: queries per filter")
    bench.add_argument("--noise", type=float, default=0.03, help="index, search: noise of the copies")
    bench.add_argument(
        "--features", help="index, search: real crops' features (training.evaluate_model cache)"
    )
    bench.add_argument("--dir", help="index, search: where to build (default: a new folder under var/)")
    bench.add_argument("--keep", action="store_true", help="index, search: keep what was built")
    bench.add_argument("--reuse", action="store_true", help="index, search: query what --keep left in --dir")
    bench.add_argument("--seed", type=int, default=0, help="index, search: random seed")
    bench.add_argument("--backend", choices=["embedded", "milvus-lite", "milvus"], default="embedded")
    bench.add_argument("--uri", help="index --backend milvus: the server, http://host:port")
    bench.add_argument("--milvus-index", default="FLAT", choices=["FLAT", "IVF_FLAT", "HNSW"])
    bench.add_argument("--top", type=int, default=1000, help="index: ids per search (N1)")
    bench.add_argument("--top-k", type=int, default=24, help="search: results shown (a page)")
    bench.add_argument(
        "--no-preload",
        dest="preload",
        action="store_false",
        help="search: leave the index and part features unmapped (pgr serve maps them: serve.preload)",
    )


def report(result: dict, out: str | None) -> int:
    """Print the figures (and write them as JSON to `out`)."""
    print(json.dumps(result, indent=1))
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
    return 0
