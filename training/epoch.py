"""One training epoch: its seeded data (PK batches, augmentation) and the optimisation steps over it.

Every random draw of an epoch is derived from (seed, epoch), so a run resumed between epochs repeats
exactly what an uninterrupted one does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from reid.backbones import OUTPUT_STRIDE
from training.build import TrainingParts
from training.config import AugmentConfig, TrainConfig
from training.datasets import Sample
from training.losses import pgr_loss_terms
from training.sampler import pk_batches
from training.transforms import TrainTransform


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A seed that depends only on (seed, epoch, stream)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_transform(input_size: tuple[int, int], augment: AugmentConfig) -> TrainTransform:
    """Augmentation of images and their feature-map label maps for this input size."""
    height, width = input_size
    label_size = (math.ceil(height / OUTPUT_STRIDE), math.ceil(width / OUTPUT_STRIDE))
    return TrainTransform(
        (height, width), label_size, flip_p=augment.flip_p, pad=augment.pad, erase_p=augment.erase_p
    )


class EpochData(Dataset):
    """One epoch's sequence of training images; item i is augmented by a generator seeded (seed, epoch, i)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        order: Sequence[int],
        labels: np.ndarray,
        transform: TrainTransform,
        seed: int,
        epoch: int,
    ) -> None:
        self.samples, self.order, self.labels = samples, list(order), labels
        self.transform, self.seed, self.epoch = transform, seed, epoch

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        j = self.order[i]
        image = cv2.imread(str(self.samples[j].path))
        if image is None:
            raise FileNotFoundError(self.samples[j].path)
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 1_000_000 + i))
        x, lab = self.transform(image, self.labels[j], gen)
        return x, lab, self.samples[j].pid


def epoch_loader(
    samples: Sequence[Sample],
    labels: np.ndarray,
    transform: TrainTransform,
    cfg: TrainConfig,
    epoch: int,
    device: torch.device,
) -> DataLoader:
    """The epoch's PK batches (P identities x K images), images augmented, with their part labels."""
    batch = cfg.p * cfg.k
    max_batches = None if cfg.max_images_per_epoch is None else cfg.max_images_per_epoch // batch
    batches = pk_batches([s.pid for s in samples], cfg.p, cfg.k, cfg.seed, epoch, max_batches)
    order = [i for b in batches for i in b]
    return DataLoader(
        EpochData(samples, order, labels, transform, cfg.seed, epoch),
        batch_sampler=[list(range(b * batch, (b + 1) * batch)) for b in range(len(batches))],
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
    )


def train_one_epoch(
    parts: TrainingParts, loader: DataLoader, cfg: TrainConfig, epoch: int, device: torch.device
) -> dict[str, float]:
    """One pass over `loader`; returns the learning rate and the mean of the loss and of each term."""
    parts.train_mode()
    model, optimizer, scaler, amp_dtype = parts.model, parts.optimizer, parts.scaler, parts.amp_dtype
    sums: dict[str, float] = {}
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not cfg.progress)
    for images, part_labels, targets in bar:
        images, part_labels = images.to(device, non_blocking=True), part_labels.to(device)
        targets = targets.to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(images)
            ins_logits, part_logits = parts.heads(out)
        terms = pgr_loss_terms(out, ins_logits, part_logits, targets, part_labels, cfg.loss)
        loss = sum(getattr(cfg.loss, f"w_{name}") * value for name, value in terms.items())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        for name, value in [("loss", loss), *terms.items()]:
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    record: dict[str, float] = {"lr": optimizer.param_groups[0]["lr"]}
    record.update({name: total / max(1, len(loader)) for name, total in sums.items()})
    return record
