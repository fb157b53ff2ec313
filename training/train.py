"""Resumable trainer for the PGR model (instance + part features, part classifier psi from pseudo labels).

    python -m training.train --config configs/train_cpu.yaml [--resume]

Per epoch: pseudo labels for psi are (re)computed at the start of epoch 0 and of every `pseudo_every`-th
epoch after it, from the model in eval mode (so psi is supervised from the first step: there is no
psi warm-up; the first labels come from the ImageNet features, whose norm already separates the person
from the background reasonably). Then PK batches with augmentation; losses:

    w_id * CE_ls(x_ins) + w_tri * triplet(x_ins)
    + w_part_id * mean_k CE_ls(p_k) + w_part_tri * mean_k triplet(p_k) + w_psi * CE(psi, pseudo labels)

CE goes through a BN-neck + linear classifier per feature (`TrainingHeads`, training only); the triplet
loss takes the raw pooled features (before the BN-neck), Euclidean, batch-hard, margin 0.3.

The config is a validated `training.config.TrainConfig` (a YAML file may inherit from a `base:`). The steps
live beside this file: `build` (model, heads, optimizer, schedule), `epoch` (one epoch's data and steps),
`checkpoint` (save, resume, init_from), `evaluate_model.evaluate_in_memory` (evaluation of the model being
trained, with no file written).

Every epoch ends with an atomic checkpoint `output_dir/last.pt`. Every random draw of an epoch (sampler,
augmentation, global torch / numpy / python RNGs) is derived from (seed, epoch), so a run stopped between
epochs and resumed with --resume ends bit-identical (on CPU) to an uninterrupted one. `best.pt` is an
inference checkpoint (`PGRModel.save`, loadable by `reid.pgr_extractor.PGRExtractor(checkpoint=...)`):
the best by mAP of progressive retrieval on query/gallery, or the last model when evaluation is off.

`init_from` starts a run from another run's `last.pt` (the model, and the heads unless `init_heads` is
false) with a fresh optimizer and schedule: a second stage on the same data, or another dataset.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgr.files import write_atomically
from pgr.model_files import ModelFileMissing
from pgr.settings import SettingsError
from reid.extractor import pick_device
from reid.pgr_model import PGRModel
from training.build import TrainingParts, build_training
from training.checkpoint import Progress, resume_from, save_checkpoint, start_from
from training.config import TrainConfig, load_config
from training.datasets import ReidDataset, load_dataset
from training.epoch import epoch_loader, epoch_seed, seed_everything, train_one_epoch, train_transform
from training.evaluate_model import evaluate_in_memory
from training.pseudo_labels import compute_pseudo_labels

__all__ = ["load_config", "main", "train"]


def train(
    config: Mapping[str, Any] | str | Path, resume: bool = False, stop_after: int | None = None
) -> dict[str, Any]:
    """Train (or resume) as configured; returns a summary with per-epoch losses and evaluations.

    `stop_after` ends the process-level run after that many epochs of this call (as if killed between
    epochs), leaving `last.pt` to resume from; the schedule still follows the configured `epochs`.
    """
    cfg = load_config(config)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    last = cfg.output_dir / "last.pt"
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    ds = load_dataset(cfg.data_root, cfg.dataset)
    parts = build_training(cfg, ds.num_train_pids, device)
    progress = resume_from(last, parts) if resume else _fresh_start(cfg, parts)
    transform = train_transform(cfg.input_size, cfg.augment)
    stop = cfg.epochs if stop_after is None else min(cfg.epochs, progress.next_epoch + stop_after)
    for epoch in range(progress.next_epoch, stop):
        seed_everything(epoch_seed(cfg.seed, epoch, 0))
        labels = _pseudo_labels(cfg, parts.model, ds, progress.pseudo_labels, epoch, device)
        progress.pseudo_labels = labels
        loader = epoch_loader(ds.train, labels, transform, cfg, epoch, device)
        record: dict[str, Any] = {"epoch": epoch + 1, **train_one_epoch(parts, loader, cfg, epoch, device)}
        parts.scheduler.step()
        record.update(_evaluate_and_keep_best(cfg, parts.model, ds, progress, epoch, device))
        progress.history.append(record)
        print(json.dumps(record))
        save_checkpoint(last, cfg, epoch, parts, progress)
    return {"output_dir": str(cfg.output_dir), "best_mAP": progress.best, "history": progress.history}


def _fresh_start(cfg: TrainConfig, parts: TrainingParts) -> Progress:
    if cfg.init_from is not None:
        start_from(cfg.init_from, parts, heads=cfg.init_heads)
    return Progress()


def _pseudo_labels(
    cfg: TrainConfig,
    model: PGRModel,
    ds: ReidDataset,
    labels: np.ndarray | None,
    epoch: int,
    device: torch.device,
) -> np.ndarray:
    """The epoch's part pseudo labels: recomputed at the first epoch of a run and every `pseudo_every`."""
    if labels is not None and epoch % cfg.pseudo_every != 0:
        return labels
    return compute_pseudo_labels(
        model,
        ds.train,
        cfg.input_size,
        device,
        cfg.pseudo_batch,
        cfg.seed,
        cfg.progress,
        cfg.foreground_rule,
        cfg.centre_prior,
    )


def _evaluate_and_keep_best(
    cfg: TrainConfig, model: PGRModel, ds: ReidDataset, progress: Progress, epoch: int, device: torch.device
) -> dict[str, float]:
    """Evaluate when due and write `best.pt` when PGR mAP improves; without evaluation, the last model."""
    final = epoch + 1 == cfg.epochs
    ev = cfg.eval
    if not ev.enabled:
        if final:
            write_atomically(cfg.output_dir / "best.pt", model.save)
        return {}
    if not (final or (ev.every and (epoch + 1) % ev.every == 0)):
        return {}
    # a copy: the extractor switches it to eval mode and channels-last, the run goes on with the original
    metrics = evaluate_in_memory(
        copy.deepcopy(model), ds, cfg.input_size, device, ev.batch, ev.queries, ev.pixel_dim
    )
    if metrics["PGR_mAP"] > progress.best:
        progress.best = metrics["PGR_mAP"]
        write_atomically(cfg.output_dir / "best.pt", model.save)
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--resume", action="store_true", help="continue from output_dir/last.pt")
    args = ap.parse_args(argv)
    try:
        summary = train(args.config, resume=args.resume)
    except (SettingsError, ModelFileMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"best_mAP": summary["best_mAP"], "output_dir": summary["output_dir"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
