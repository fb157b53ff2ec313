"""Cache a frozen backbone's feature maps and embeddings for a list of images, so that heads on top of it
(psi, the reduction, the part necks) train in minutes instead of re-running the backbone every epoch.

A cache is a folder: `maps.npy` (N, c, h, w) float16 and `embeddings.npy` (N, e) float32, both opened as
memory maps, `names.txt` (one image file name per row) and `done` (how many rows are written). Filling it is
resumable: a stopped run continues at the first row not yet written. With `flip` every image is also run
mirrored (rows N..2N-1), the training set's flip augmentation.

    python -m training.map_cache --dataset market1501 --out var/maps/market1501
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pgr.paths import REPO
from pgr.settings import DEFAULT_OPENVINO_REID
from reid.openvino_backbone import PRECISIONS, OpenVinoBackbone
from training.datasets import load_dataset


@dataclass
class MapCache:
    """An opened cache: rows of `maps` / `embeddings` by image name (and mirrored rows when flipped)."""

    maps: np.ndarray  # (R, c, h, w) float16, memory-mapped
    embeddings: np.ndarray  # (R, e) float32
    names: list[str]
    flipped: bool

    def rows(self, names: list[str], flip: bool = False) -> np.ndarray:
        """Row numbers of the given image names (their mirrored rows with `flip`)."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise KeyError(f"{len(missing)} images not in the map cache, e.g. {missing[0]}")
        if flip and not self.flipped:
            raise ValueError("the cache holds no mirrored rows")
        offset = len(self.names) if flip else 0
        return np.array([index[n] + offset for n in names], dtype=np.int64)


def open_cache(folder: Path) -> MapCache:
    """Open a complete cache written by `fill_cache`."""
    folder = Path(folder)
    names = (folder / "names.txt").read_text().split("\n")
    maps = np.load(folder / "maps.npy", mmap_mode="r")
    done = int((folder / "done").read_text()) if (folder / "done").exists() else 0
    if done < len(maps):
        raise RuntimeError(f"{folder}: map cache incomplete ({done} of {len(maps)} rows): run it again")
    return MapCache(
        maps, np.load(folder / "embeddings.npy", mmap_mode="r"), names, len(maps) == 2 * len(names)
    )


def fill_cache(backbone: OpenVinoBackbone, paths: list[Path], folder: Path, flip: bool, chunk: int = 256):
    """Write (or continue writing) the maps and embeddings of `paths` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError("image names must be unique within one cache")
    rows = len(paths) * (2 if flip else 1)
    probe_maps, probe_emb = backbone.run([cv2.imread(str(paths[0]))])
    names_file = folder / "names.txt"
    if names_file.exists() and names_file.read_text().split("\n") != names:
        raise ValueError(f"{folder}: holds a cache of other images; use another folder")
    names_file.write_text("\n".join(names))
    mode = "r+" if (folder / "maps.npy").exists() else "w+"
    maps = np.lib.format.open_memmap(
        folder / "maps.npy", mode=mode, dtype=np.float16, shape=(rows, *probe_maps.shape[1:])
    )
    embs = np.lib.format.open_memmap(
        folder / "embeddings.npy", mode=mode, dtype=np.float32, shape=(rows, probe_emb.shape[1])
    )
    done_file = folder / "done"
    done = int(done_file.read_text()) if done_file.exists() else 0
    order = [(i, False) for i in range(len(paths))] + ([(i, True) for i in range(len(paths))] if flip else [])
    t0 = time.perf_counter()
    for start in tqdm(range(done, rows, chunk), desc=f"maps: {folder.name}", unit="chunk"):
        batch = order[start : start + chunk]
        crops = []
        for i, mirrored in batch:
            image = cv2.imread(str(paths[i]))
            if image is None:
                raise FileNotFoundError(f"cannot read {paths[i]}")
            crops.append(image[:, ::-1].copy() if mirrored else image)
        m, e = backbone.run(crops)
        maps[start : start + len(batch)] = m.astype(np.float16)
        embs[start : start + len(batch)] = e
        maps.flush()
        embs.flush()
        done_file.write_text(str(start + len(batch)))
    seconds = time.perf_counter() - t0
    if rows > done:
        print(f"{folder}: {rows - done} crops in {seconds:.0f} s ({(rows - done) / seconds:.1f} crops/s)")


def dataset_images(data: Path, dataset: str) -> dict[str, list[Path]]:
    """The images of each split (train, query, gallery) of a dataset."""
    ds = load_dataset(data, dataset)
    return {
        "train": [s.path for s in ds.train],
        "query": [s.path for s in ds.query],
        "gallery": [s.path for s in ds.gallery],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.map_cache", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", type=Path, default=DEFAULT_OPENVINO_REID)
    ap.add_argument("--out", type=Path, required=True, help="folder; one cache per split goes inside")
    ap.add_argument("--splits", default="train,query,gallery")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS, help="OpenVINO precision")
    args = ap.parse_args(argv)
    backbone = OpenVinoBackbone(args.model, precision=args.precision)
    images = dataset_images(args.data, args.dataset)
    for split in args.splits.split(","):
        fill_cache(backbone, images[split], args.out / split, flip=split == "train")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
