"""The training checkpoint (`last.pt`): everything a stopped run needs to go on bit-identically.

Model, heads, optimizer, schedule, AMP scaler, the current pseudo labels, the best evaluation so far, the
history and every RNG state, written atomically after each epoch. Not an inference checkpoint: that is
`best.pt` (`PGRModel.save`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgr.files import write_atomically
from training.build import TrainingParts
from training.config import TrainConfig

FORMAT = "pgr-train-v1"


@dataclass
class Progress:
    """Where a run stands: the next epoch to train, the best PGR mAP so far, per-epoch records, labels."""

    next_epoch: int = 0
    best: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    pseudo_labels: np.ndarray | None = None


def save_checkpoint(
    path: Path, cfg: TrainConfig, epoch: int, parts: TrainingParts, progress: Progress
) -> None:
    """Write `path` atomically after `epoch` (0-based) has been trained."""
    assert progress.pseudo_labels is not None, "an epoch always has pseudo labels"
    state = {
        "format": FORMAT,
        "config": cfg.model_dump(mode="json"),
        "epoch": epoch,
        "model": parts.model.state_dict(),
        "heads": parts.heads.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "pseudo_labels": torch.from_numpy(progress.pseudo_labels),
        "best": progress.best,
        "history": progress.history,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    write_atomically(path, lambda tmp: torch.save(state, tmp))


def resume_from(path: Path, parts: TrainingParts) -> Progress:
    """Load `path` into `parts`, restore the RNGs, and return where the run stood."""
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    ck = torch.load(path, map_location="cpu", weights_only=False)  # our own file: RNG states inside
    parts.model.load_state_dict(ck["model"])
    parts.heads.load_state_dict(ck["heads"])
    parts.optimizer.load_state_dict(ck["optimizer"])
    parts.scheduler.load_state_dict(ck["scheduler"])
    parts.scaler.load_state_dict(ck["scaler"])
    random.setstate(ck["rng"]["python"])
    np.random.set_state(ck["rng"]["numpy"])
    torch.set_rng_state(ck["rng"]["torch"])
    if torch.cuda.is_available() and ck["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
    return Progress(ck["epoch"] + 1, ck["best"], ck["history"], ck["pseudo_labels"].numpy())


def start_from(path: Path, parts: TrainingParts, heads: bool) -> None:
    """Start a run from another run's `last.pt`: its model, and its heads when `heads` (`init_from`)."""
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no training checkpoint at {path}")
    init = torch.load(path, map_location="cpu", weights_only=False)  # our own file
    parts.model.load_state_dict(init["model"])
    if heads:
        parts.heads.load_state_dict(init["heads"])
