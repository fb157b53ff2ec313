"""Building what a training run updates: the PGR model, its training heads, the optimizer and schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from reid.pgr_model import PGRConfig, PGRModel
from training.config import ModelConfig, OptimConfig, TrainConfig
from training.heads import TrainingHeads


@dataclass
class TrainingParts:
    """The modules and optimisation state of one run; a checkpoint saves and restores exactly these."""

    model: PGRModel
    heads: TrainingHeads
    frozen: list[nn.Module]  # backbone stages kept in eval mode with requires_grad off
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # autocast dtype, None: float32

    def train_mode(self) -> None:
        """Model and heads in training mode, the frozen stages (and their BatchNorm statistics) not."""
        self.model.train()
        self.heads.train()
        for module in self.frozen:
            module.eval()


def build_model(cfg: ModelConfig, device: torch.device) -> PGRModel:
    """The PGR model on its backbone weights (ImageNet or re-ID; random init without)."""
    config = PGRConfig(cfg.backbone, cfg.num_parts, cfg.reduce_dim, cfg.backbone_embedding, cfg.neck)
    return PGRModel(config, cfg.weights).to(device)


def freeze_stages(model: PGRModel, stages: int) -> list[nn.Module]:
    """Turn gradients off for the first `stages` top-level children of the backbone; returns them."""
    frozen = list(model.backbone.children())[:stages]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def lr_factor(cfg: OptimConfig, epochs: int) -> Callable[[int], float]:
    """Learning-rate multiplier per epoch: linear warm-up from 1/10, then cosine or step decay."""
    warm = cfg.warmup_epochs

    def factor(epoch: int) -> float:
        if epoch < warm:
            return 0.1 + 0.9 * epoch / warm
        if cfg.schedule == "step":
            return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        t = (epoch - warm) / max(1, epochs - warm)
        return cfg.min_factor + (1 - cfg.min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def build_training(cfg: TrainConfig, num_ids: int, device: torch.device) -> TrainingParts:
    """Model, heads for `num_ids` identities, frozen stages, Adam with its schedule, and the AMP scaler."""
    model = build_model(cfg.model, device)
    heads = TrainingHeads(model, num_ids).to(device)
    frozen = freeze_stages(model, cfg.model.freeze_backbone_stages)
    params = [p for p in [*model.parameters(), *heads.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.optim, cfg.epochs))
    amp = cfg.amp if device.type == "cuda" else "none"
    return TrainingParts(
        model=model,
        heads=heads,
        frozen=frozen,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=amp == "fp16"),
        amp_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp),
    )
