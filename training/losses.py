"""Training losses: identity cross-entropy with label smoothing and the batch-hard triplet loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
