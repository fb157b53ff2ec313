"""PGR heads on a frozen backbone's feature map: a learned reduction, the part classifier psi and BN-necks,
trained on cached maps (`training.train_map_heads`) while the backbone (an OpenVINO IR) never changes.

For a map X0 (n, c, h, w) and the backbone's own embedding e (n, k):
- cells listed in `artifact_cells` are zeroed first (0277's two top corner cells carry norms ~50x the rest,
  the same in every crop: a property of the network, not of the person);
- X = ReLU(BN(conv1x1(X0))) is PGR's feature map (d channels), P = softmax(psi(X)), M = sum_k P_k;
- parts p_k (Eq. 3) and the pooled instance feature (Eq. 1) come from X, through BN-necks at inference;
- the stored instance feature is e itself when `instance_mix` is 0, else [e/|e|, w f/|f|] with f the necked
  pooled feature and w = instance_mix, so that cos = (cos_e + w^2 cos_f) / (1 + w^2).

A checkpoint is `{"format": "pgr-map-heads-v1", "config", "state_dict"}`; `config.backbone` names the IR
the heads were trained on, and loading them on another backbone is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pgr.model_files import require_model_file
from reid.pgr_model import PGROutput, instance_feature, part_features

MAP_HEADS_FORMAT = "pgr-map-heads-v1"


@dataclass(frozen=True)
class MapHeadsConfig:
    """What the heads are made of and which frozen backbone they sit on; stored in every checkpoint."""

    backbone: str = "person-reidentification-retail-0277"  # the IR's file stem
    in_channels: int = 512
    embedding_dim: int = 256
    reduce_dim: int = 256
    num_parts: int = 5
    artifact_cells: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0), (0, 7)])
    instance_mix: float = 0.0  # weight of the trained pooled feature beside the backbone's embedding


class MapHeads(nn.Module):
    """Reduction + psi + necks over a frozen map; `forward(maps, embeddings)` gives a `PGROutput`."""

    def __init__(self, config: MapHeadsConfig) -> None:
        super().__init__()
        self.config = config
        self.reduce = nn.Sequential(
            nn.Conv2d(config.in_channels, config.reduce_dim, 1, bias=False),
            nn.BatchNorm2d(config.reduce_dim),
            nn.ReLU(inplace=True),
        )
        self.part_classifier = nn.Conv2d(config.reduce_dim, config.num_parts + 1, 1)
        self.dim = self.instance_dim = config.reduce_dim
        self.necks = nn.ModuleList(nn.BatchNorm1d(config.reduce_dim) for _ in range(config.num_parts + 1))
        for neck in self.necks:
            neck.bias.requires_grad_(False)

    def clean(self, maps: torch.Tensor) -> torch.Tensor:
        """The backbone map with the artifact cells zeroed, float32."""
        x = maps.float()
        if self.config.artifact_cells:
            x = x.clone()
            for r, c in self.config.artifact_cells:
                x[:, :, r, c] = 0
        return x

    def forward(self, maps: torch.Tensor, embeddings: torch.Tensor) -> PGROutput:
        x = self.reduce(self.clean(maps))
        logits = self.part_classifier(x)
        probs = logits.softmax(dim=1)
        mask = probs[:, 1:].sum(dim=1)
        pooled = instance_feature(x, mask)
        parts = part_features(x, probs)
        pooled_out = self.necks[0](pooled)
        parts_out = torch.stack([neck(parts[:, k]) for k, neck in enumerate(self.necks[1:])], dim=1)
        stored = self.stored_instance(embeddings.float(), pooled_out)
        return PGROutput.assemble(x, logits, probs, mask, pooled, parts, stored, parts_out, pooled_out)

    def stored_instance(self, embeddings: torch.Tensor, pooled_out: torch.Tensor) -> torch.Tensor:
        """The instance feature inference stores: the embedding, or it beside the weighted pooled one."""
        w = self.config.instance_mix
        if w == 0:
            return embeddings
        return torch.cat([F.normalize(embeddings, dim=1), w * F.normalize(pooled_out, dim=1)], dim=1)

    def save(self, path: Path) -> None:
        """Write a checkpoint that `load` rebuilds."""
        config = asdict(self.config)
        config["artifact_cells"] = [list(c) for c in self.config.artifact_cells]
        torch.save({"format": MAP_HEADS_FORMAT, "config": config, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: Path) -> MapHeads:
        """Rebuild heads from a checkpoint; ModelFileMissing when absent, ValueError when not heads."""
        path = require_model_file(path, "PGR map heads checkpoint")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say which and why, in one line
            raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != MAP_HEADS_FORMAT:
            raise ValueError(f"{path}: not a {MAP_HEADS_FORMAT} checkpoint")
        config = dict(ckpt["config"])
        config["artifact_cells"] = [tuple(c) for c in config.get("artifact_cells", [])]
        heads = cls(MapHeadsConfig(**config))
        heads.load_state_dict(ckpt["state_dict"])
        return heads
