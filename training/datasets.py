"""Re-ID datasets in the standard Market-1501 layout: Market-1501, DukeMTMC-reID, Occluded-Duke.

`ROOT/{bounding_box_train,query,bounding_box_test}/*.jpg`, the person id and camera parsed from each
name: `0002_c1s1_000451_03.jpg` (Market) and `0005_c2_f0046985.jpg` (Duke). By the standard protocol the
junk images (pid -1) are dropped everywhere, the distractors (pid 0) stay in the gallery only, and
training ids are relabelled 0..N-1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^(-?\d+)_c(\d+)")
DATASETS = {"market1501": "market1501", "dukemtmc": "dukemtmc-reid", "occluded_duke": "occluded-duke"}


@dataclass(frozen=True)
class Sample:
    """One image: its path, person id (training: relabelled) and camera (0-based)."""

    path: Path
    pid: int
    camid: int


@dataclass(frozen=True)
class ReidDataset:
    name: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]

    @property
    def num_train_pids(self) -> int:
        return len({s.pid for s in self.train})

    def summary(self) -> str:
        parts = [
            f"{split}: {len(samples)} images, {len({s.pid for s in samples})} ids"
            for split, samples in (("train", self.train), ("query", self.query), ("gallery", self.gallery))
        ]
        return f"{self.name}: " + "; ".join(parts)


def parse_name(name: str) -> tuple[int, int]:
    """(pid, camera id 0-based) from a file name; raises ValueError on a name of another form."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(f"not a Market/Duke-style re-ID file name: {name!r}")
    return int(m.group(1)), int(m.group(2)) - 1


def _read_split(folder: Path, keep_distractors: bool) -> list[Sample]:
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder missing: {folder}")
    samples = []
    for path in sorted(folder.glob("*.jpg")):
        pid, camid = parse_name(path.name)
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue
        samples.append(Sample(path, pid, camid))
    return samples


def load_dataset(root: Path, name: str) -> ReidDataset:
    """Load one dataset by name (market1501, dukemtmc, occluded_duke) from `root` (e.g. data/)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    base = Path(root) / DATASETS[name]
    train = _read_split(base / "bounding_box_train", keep_distractors=False)
    relabel = {pid: i for i, pid in enumerate(sorted({s.pid for s in train}))}
    return ReidDataset(
        name=name,
        train=[Sample(s.path, relabel[s.pid], s.camid) for s in train],
        query=_read_split(base / "query", keep_distractors=False),
        gallery=_read_split(base / "bounding_box_test", keep_distractors=True),
    )
