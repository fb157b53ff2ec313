"""Crop features of a replay, extracted once per dataset, split and model and cached under var/ (git-ignored),
so that the threshold calibration and the offline studies of `pgr.app.identity_eval` do not re-extract.

A cache is a folder named by a key (the extractor's name, the bytes of its heads file, the crops' file names
and sizes) holding shards of `SHARD` crops (`00000.npz`, ...): instance (n, d) float32, parts (n, p, d),
part_visibility (n, p), and the pixel sets laid end to end (pixels (m, d'), pixel_coords (m, 2) with
`pixel_offsets` (n + 1)). A stopped fill resumes at the first missing shard.

With `maps` (a folder written by `python -m training.map_cache`: train/, query/, gallery/) only the heads
run, on the backbone maps cached there (float16); the first shard is checked against the extractor run on the
images themselves (instance cosine >= 0.9999), so a cache of another backbone is refused.

The live replay (`identity_eval replay`) never reads this cache: its crops go through the re-ID stage.

>>> feats = replay_features(crops, extractor, heads=Path("reid/weights/h.pt"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pgr.files import write_atomically
from pgr.messages import CropFeatures
from pgr.paths import REPO
from reid.extractor import FeatureExtractor

CACHE_DIR = REPO / "var" / "identity_eval" / "features"
SHARD = 1024
_MAP_SPLITS = {"bounding_box_train": "train", "query": "query", "bounding_box_test": "gallery"}


def cache_key(extractor: FeatureExtractor, heads: Path | None, paths: Sequence[Path]) -> str:
    """Same model, inference precision and heads file, same images: same features (the model name is the
    network's, the same in f32, bf16 and int8)."""
    h = hashlib.sha1(extractor.name.encode())
    h.update(getattr(getattr(extractor, "backbone", None), "precision", "").encode())
    if heads is not None and Path(heads).is_file():
        h.update(Path(heads).read_bytes())
    for p in paths:
        h.update(f"{p.parent.name}/{p.name}:{p.stat().st_size};".encode())
    return h.hexdigest()[:20]


def replay_features(
    paths: Sequence[Path],
    extractor: FeatureExtractor,
    heads: Path | None = None,
    cache_dir: Path = CACHE_DIR,
    maps: Path | None = None,
    batch: int = 32,
) -> list[CropFeatures]:
    """The features of every image in `paths` (in order), from the cache, filled first where missing."""
    folder = Path(cache_dir) / cache_key(extractor, heads, paths)
    out: list[CropFeatures] = []
    for n, start in enumerate(range(0, len(paths), SHARD)):
        shard = folder / f"{n:05d}.npz"
        chunk = list(paths[start : start + SHARD])
        if not shard.is_file():
            feats = _extract(chunk, extractor, maps, batch, check=n == 0)
            write_atomically(shard, lambda tmp, feats=feats: _save(tmp, feats))
            print(f"features: {folder.name}/{shard.name} ({start + len(chunk)} of {len(paths)})", flush=True)
        out += _load(shard)
    return out


def _extract(
    paths: list[Path], extractor: FeatureExtractor, maps: Path | None, batch: int, check: bool
) -> list[CropFeatures]:
    if maps is None:
        feats = []
        for i in range(0, len(paths), batch):
            feats += extractor.extract([_read(p) for p in paths[i : i + batch]])
        return feats
    from training.map_cache import open_cache

    by_split: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        by_split.setdefault(_MAP_SPLITS[p.parent.name], []).append(i)
    feats: list[CropFeatures | None] = [None] * len(paths)
    for split, idx in by_split.items():
        cache = open_cache(Path(maps) / split)
        rows = cache.rows([paths[i].name for i in idx])
        for s in range(0, len(idx), 256):
            part = rows[s : s + 256]
            got = extractor.features_of_maps(cache.maps[part], cache.embeddings[part])  # type: ignore[attr-defined]
            for i, f in zip(idx[s : s + 256], got, strict=True):
                feats[i] = f
    done = [f for f in feats if f is not None]
    if check:
        live = extractor.extract([_read(p) for p in paths[:4]])
        cos = [float(a.instance @ b.instance) for a, b in zip(live, done[:4], strict=True)]
        if min(cos) < 0.9999:
            raise ValueError(
                f"{maps}: cached maps disagree with the extractor (instance cosine {min(cos):.4f})"
            )
    return done


def _read(p: Path) -> np.ndarray:
    image = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read {p}")
    return image


def _save(path: Path, feats: list[CropFeatures]) -> None:
    arrays = {"instance": np.stack([f.instance for f in feats]).astype(np.float32)}
    if feats[0].parts is not None:
        arrays["parts"] = np.stack([f.parts for f in feats])
        arrays["part_visibility"] = np.stack([f.part_visibility for f in feats])
    if feats[0].pixels is not None:
        arrays["pixels"] = np.concatenate([f.pixels for f in feats])
        arrays["pixel_coords"] = np.concatenate([f.pixel_coords for f in feats])
        arrays["pixel_offsets"] = np.cumsum([0] + [len(f.pixels) for f in feats])
    with path.open("wb") as fh:
        np.savez(fh, **arrays)


def _load(path: Path) -> list[CropFeatures]:
    with np.load(path) as z:
        a = {k: z[k] for k in z.files}
    n = len(a["instance"])
    out = []
    for i in range(n):
        f = CropFeatures(a["instance"][i])
        if "parts" in a:
            f.parts, f.part_visibility = a["parts"][i], a["part_visibility"][i]
        if "pixels" in a:
            lo, hi = a["pixel_offsets"][i], a["pixel_offsets"][i + 1]
            f.pixels, f.pixel_coords = a["pixels"][lo:hi], a["pixel_coords"][lo:hi]
        out.append(f)
    return out
