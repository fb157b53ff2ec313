"""The heads used only in training: a linear identity classifier per pooled feature, behind a BN-neck."""

from __future__ import annotations

import torch
from torch import nn

from reid.pgr_model import PGRModel, PGROutput


class TrainingHeads(nn.Module):
    """Bias-free linear ID classifiers for x_ins and for each part feature (training only), behind BN-necks:
    the heads' own, or the model's when it keeps its necks for inference (`PGRConfig.neck`)."""

    def __init__(self, model: PGRModel, num_ids: int) -> None:
        super().__init__()
        dims = [model.instance_dim] + [model.dim] * model.config.num_parts
        self.necks: nn.ModuleList | None = None
        if model.necks is None:
            self.necks = nn.ModuleList(nn.BatchNorm1d(d) for d in dims)
            for neck in self.necks:
                neck.bias.requires_grad_(False)
        self.classifiers = nn.ModuleList(nn.Linear(d, num_ids, bias=False) for d in dims)
        for fc in self.classifiers:
            nn.init.normal_(fc.weight, std=0.001)

    def forward(self, out: PGROutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for x_ins (n, C) and for the parts (n, p, C) of a model output."""
        if self.necks is None:  # the model's necks already ran
            instance = out.instance_out if out.instance_neck is None else out.instance_neck
            feats = [instance] + [out.parts_out[:, k] for k in range(out.parts_out.shape[1])]
        else:
            feats = [out.instance] + [out.parts[:, k] for k in range(out.parts.shape[1])]
            feats = [neck(f) for f, neck in zip(feats, self.necks, strict=True)]
        logits = [fc(f) for f, fc in zip(feats, self.classifiers, strict=True)]
        return logits[0], torch.stack(logits[1:], dim=1)
