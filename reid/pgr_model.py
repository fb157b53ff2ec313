"""The PGR network: backbone, optional 1x1 reduction, part classifier psi, and the pooling of Eqs. 1 and 3.

The pooling is in plain functions (`instance_feature`, `part_features`, `part_visibility`) so the trainer
and the evaluator call the same code as inference. A checkpoint is `{"format", "config", "state_dict"}`.

>>> model = PGRModel(PGRConfig(backbone="resnet50")).eval()
>>> out = model(torch.zeros(2, 3, 256, 128))
>>> tuple(out.parts.shape), tuple(out.probs.shape)
((2, 5, 2048), (2, 6, 16, 8))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from pgr.model_files import require_model_file
from reid.backbones import build_backbone

CHECKPOINT_FORMAT = "pgr-v1"
_EPS = 1e-6


@dataclass(frozen=True)
class PGRConfig:
    """What a PGR model is made of; stored in every checkpoint."""

    backbone: str = "mobilenetv2"
    num_parts: int = 5  # p; the classifier has p + 1 classes, class 0 = background
    reduce_dim: int | None = None  # d after a 1x1 conv+BN+ReLU; None keeps the backbone's channels
    # x_ins through the backbone's own embedding layer (OSNet's fc) after the M-weighted pooling of Eq. 1
    backbone_embedding: bool = False
    # BN-necks on x_ins and every p_k (BoT): trained with the ID classifiers, used at inference when true
    neck: bool = False


@dataclass
class PGROutput:
    """Everything inference needs from one forward pass (n crops, d channels, h x w cells, p parts)."""

    features: torch.Tensor  # X: (n, d, h, w)
    logits: torch.Tensor  # psi(X): (n, p+1, h, w)
    probs: torch.Tensor  # P = softmax over classes: (n, p+1, h, w)
    mask: torch.Tensor  # M = sum of the foreground part probabilities: (n, h, w)
    instance: torch.Tensor  # x_ins, Eq. 1 (or its embedding): (n, e), not normalised, before any neck
    parts: torch.Tensor  # p_k, Eq. 3: (n, p, d), not normalised, before any neck
    visibility: torch.Tensor  # v_k: (n, p) bool, part k is the label of some cell
    labels: torch.Tensor  # class per cell (see `cell_labels`): (n, h, w) long, 0 = background
    foreground: torch.Tensor  # M > 1/2, the same as labels != 0: (n, h, w) bool
    instance_out: torch.Tensor  # what inference stores: x_ins after its neck when the model has necks
    parts_out: torch.Tensor  # p_k after their necks when the model has necks
    # the trained instance feature after its neck, where it differs from what is stored (map heads store
    # the frozen backbone's embedding); the ID loss takes it
    instance_neck: torch.Tensor | None = None

    @classmethod
    def assemble(
        cls,
        features: torch.Tensor,
        logits: torch.Tensor,
        probs: torch.Tensor,
        mask: torch.Tensor,
        instance: torch.Tensor,
        parts: torch.Tensor,
        instance_out: torch.Tensor,
        parts_out: torch.Tensor,
        instance_neck: torch.Tensor | None = None,
    ) -> PGROutput:
        """The output of any PGR head: cell labels, part visibility and foreground derived from P."""
        labels = cell_labels(probs)
        return cls(
            features=features,
            logits=logits,
            probs=probs,
            mask=mask,
            instance=instance,
            parts=parts,
            visibility=part_visibility(labels, probs.shape[1] - 1),
            labels=labels,
            foreground=labels != 0,
            instance_out=instance_out,
            parts_out=parts_out,
            instance_neck=instance_neck,
        )


def instance_feature(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 1: x_ins = sum_ij M_ij X_ij / sum_ij M_ij, for X (n, d, h, w) and M (n, h, w)."""
    return torch.einsum("ndhw,nhw->nd", x, mask) / mask.sum(dim=(1, 2)).clamp_min(_EPS)[:, None]


def part_features(x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Eq. 3: p_k = sum_ij P_ijk X_ij / sum_ij P_ijk for k = 1..p, from P (n, p+1, h, w): (n, p, d)."""
    fg = probs[:, 1:]
    return torch.einsum("ndhw,nkhw->nkd", x, fg) / fg.sum(dim=(2, 3)).clamp_min(_EPS)[:, :, None]


def cell_labels(probs: torch.Tensor) -> torch.Tensor:
    """Class per cell from P (n, p+1, h, w): 0 where M <= 1/2, else the most probable of the p parts.

    Foreground is M = sum_k P_k > 1/2 (psi puts more mass on the body than on the background), not a
    (p+1)-way argmax: with the mass spread over p parts, background beats every single part in most body
    cells although the parts together beat it (the trained MobileNetV2 model's 6-way argmax called 1.5 of
    128 cells foreground per Market-1501 gallery crop; M > 1/2 calls about a quarter).
    """
    parts = probs[:, 1:].argmax(dim=1) + 1
    return torch.where(probs[:, 1:].sum(dim=1) > 0.5, parts, torch.zeros_like(parts))


def part_visibility(labels: torch.Tensor, num_parts: int) -> torch.Tensor:
    """v_k = 1 iff some cell is labelled k by `cell_labels` (k = 1..p): (n, p) bool from labels (n, h, w)."""
    classes = torch.arange(1, num_parts + 1, device=labels.device)
    return (labels.flatten(1)[:, None, :] == classes[None, :, None]).any(dim=2)


class PGRModel(nn.Module):
    """Backbone -> [1x1 conv+BN+ReLU to d] -> X; psi = 1x1 conv to p+1 classes; pooled by Eqs. 1 and 3."""

    def __init__(self, config: PGRConfig, backbone_weights: Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone, channels = build_backbone(config.backbone, backbone_weights)
        self.reduce: nn.Module = nn.Identity()
        if config.reduce_dim is not None:
            self.reduce = nn.Sequential(
                nn.Conv2d(channels, config.reduce_dim, 1, bias=False),
                nn.BatchNorm2d(config.reduce_dim),
                nn.ReLU(inplace=True),
            )
            channels = config.reduce_dim
        self.dim = channels
        self.part_classifier = nn.Conv2d(channels, config.num_parts + 1, 1)
        self.instance_dim = channels
        if config.backbone_embedding:
            if not hasattr(self.backbone, "embed_pooled"):
                raise ValueError(f"backbone {config.backbone!r} has no embedding of its own")
            self.instance_dim = self.backbone.feature_dim
        self.necks: nn.ModuleList | None = None
        if config.neck:
            dims = [self.instance_dim] + [channels] * config.num_parts
            self.necks = nn.ModuleList(nn.BatchNorm1d(d) for d in dims)
            for neck in self.necks:
                neck.bias.requires_grad_(False)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """X (n, d, h, w) for ImageNet-normalised images (n, 3, H, W)."""
        return self.reduce(self.backbone(images))

    def forward(self, images: torch.Tensor) -> PGROutput:
        x = self.feature_map(images).float()
        logits = self.part_classifier(x)
        probs = logits.softmax(dim=1)
        mask = probs[:, 1:].sum(dim=1)
        instance = instance_feature(x, mask)
        if self.config.backbone_embedding:
            instance = self.backbone.embed_pooled(instance)
        parts = part_features(x, probs)
        instance_out, parts_out = instance, parts
        if self.necks is not None:
            instance_out, parts_out = self.apply_necks(instance, parts)
        return PGROutput.assemble(x, logits, probs, mask, instance, parts, instance_out, parts_out)

    def apply_necks(self, instance: torch.Tensor, parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_ins (n, e) and p_k (n, p, d) through their BN-necks."""
        assert self.necks is not None
        necked = [neck(parts[:, k]) for k, neck in enumerate(self.necks[1:])]
        return self.necks[0](instance), torch.stack(necked, dim=1)

    def save(self, path: Path) -> None:
        """Write a checkpoint that `load` rebuilds without the backbone's ImageNet file."""
        torch.save(
            {"format": CHECKPOINT_FORMAT, "config": asdict(self.config), "state_dict": self.state_dict()},
            path,
        )

    @classmethod
    def load(cls, path: Path) -> PGRModel:
        """Rebuild a model from a checkpoint written by `save`; ModelFileMissing when it is not there."""
        ckpt = torch.load(require_model_file(path, "PGR checkpoint"), map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
        model = cls(PGRConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
        return model
