"""The heads used only in training: a BN-neck and a linear identity classifier per pooled feature."""

from __future__ import annotations

import torch
from torch import nn


class TrainingHeads(nn.Module):
    """BN-neck + bias-free linear ID classifier for x_ins and for each part feature (training only)."""

    def __init__(self, dim: int, num_parts: int, num_ids: int) -> None:
        super().__init__()
        self.necks = nn.ModuleList(nn.BatchNorm1d(dim) for _ in range(num_parts + 1))
        self.classifiers = nn.ModuleList(nn.Linear(dim, num_ids, bias=False) for _ in range(num_parts + 1))
        for neck, fc in zip(self.necks, self.classifiers, strict=True):
            neck.bias.requires_grad_(False)
            nn.init.normal_(fc.weight, std=0.001)

    def forward(self, instance: torch.Tensor, parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for x_ins (n, C) and for the parts (n, p, C)."""
        feats = [instance] + [parts[:, k] for k in range(parts.shape[1])]
        logits = [fc(neck(f)) for f, neck, fc in zip(feats, self.necks, self.classifiers, strict=True)]
        return logits[0], torch.stack(logits[1:], dim=1)
