"""Training losses: identity cross-entropy with label smoothing, the batch-hard triplet loss, and the
PGR objective's terms built from them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reid.pgr_model import PGROutput
from training.config import LossConfig
from training.transforms import IGNORE


def id_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy with label smoothing `smoothing` (logits (n, c), targets (n,) long)."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=smoothing)


def triplet_loss(features: torch.Tensor, targets: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss on raw (not normalised) features with Euclidean distance, BoT-style.

    For every anchor: hardest positive = farthest same-id sample, hardest negative = closest other-id
    sample; loss = mean(relu(d_ap - d_an + margin)). Anchors without a positive or negative are skipped.
    """
    x = features.float()
    sq = (x * x).sum(dim=1)
    dist = (sq[:, None] + sq[None, :] - 2 * x @ x.t()).clamp_min(1e-12).sqrt()
    same = targets[:, None] == targets[None, :]
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    pos = same & ~eye
    neg = ~same
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(~neg, float("inf")).amin(dim=1)
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not valid.any():
        return x.sum() * 0
    return F.relu(d_ap[valid] - d_an[valid] + margin).mean()


def pgr_loss_terms(
    out: PGROutput,
    ins_logits: torch.Tensor,
    part_logits: torch.Tensor,
    targets: torch.Tensor,
    part_labels: torch.Tensor,
    cfg: LossConfig,
) -> dict[str, torch.Tensor]:
    """The terms of the PGR objective, each weighted by `cfg.w_<name>` in the total.

    id / tri: CE and triplet on x_ins; part_id / part_tri: their means over the parts; psi: CE of the part
    classifier against the pseudo labels (mean over the labelled cells).
    """
    ls, margin, num_parts = cfg.label_smoothing, cfg.margin, out.parts.shape[1]
    terms = {
        "id": id_loss(ins_logits, targets, ls),
        "tri": triplet_loss(out.instance, targets, margin),
        "part_id": torch.stack([id_loss(part_logits[:, k], targets, ls) for k in range(num_parts)]).mean(),
        "part_tri": torch.stack(
            [triplet_loss(out.parts[:, k], targets, margin) for k in range(num_parts)]
        ).mean(),
    }
    valid = part_labels != IGNORE
    psi_ce = F.cross_entropy(out.logits.float(), part_labels, ignore_index=IGNORE, reduction="sum")
    terms["psi"] = psi_ce / valid.sum().clamp_min(1)
    return terms
