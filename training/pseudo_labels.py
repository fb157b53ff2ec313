"""Part pseudo labels for training psi, decided from the network's own features (no parsing model).

Foreground, two rules (`foreground_rule`):
- "image": per image, the L2 norm of every pixel feature rescaled to [0, 1] within the image, split by a
  1-D 2-means; the high-norm cluster is the foreground (the first trainer's rule).
- "identity" (ISP's, Zhu et al. 2020): each pixel's norm divided by its image's largest, sharpened by
  1 / (1 + exp(-10 v + 2)), then ONE 1-D 2-means over all pixels of all images of the identity; the high
  cluster is the foreground. Pooling over the identity keeps an image whose background is bright (a wall, a
  car) from calling that background foreground just because it is the brightest thing in that image.
Either may be multiplied by a centre prior first (`centre_prior` > 0): weight 1 in the middle columns,
falling linearly to 1 - centre_prior at the left and right edges (detector crops centre the person).

Parts: per identity, K-means (k = p) over the L2-normalised foreground pixel features of all its images;
clusters are renumbered 1..p by mean row (1 = top), background is 0. An identity with fewer foreground
cells than p gets p horizontal bands.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from reid.extractor import crops_to_tensor
from reid.pgr_model import PGRModel
from training.datasets import Sample


def foreground(features: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """(n, h, w) bool foreground from features (n, d, h, w): per-image normalised L2 norm, 1-D 2-means."""
    norm = features.float().norm(dim=1).flatten(1)  # (n, hw)
    lo, hi = norm.amin(dim=1, keepdim=True), norm.amax(dim=1, keepdim=True)
    v = (norm - lo) / (hi - lo).clamp_min(1e-12)
    c0, c1 = torch.zeros_like(lo), torch.ones_like(hi)  # centres start at the extremes
    for _ in range(iters):
        high = (v - c1).abs() < (v - c0).abs()
        c1 = (v * high).sum(1, keepdim=True) / high.sum(1, keepdim=True).clamp_min(1)
        c0 = (v * ~high).sum(1, keepdim=True) / (~high).sum(1, keepdim=True).clamp_min(1)
    high = (v - c1).abs() < (v - c0).abs()
    return high.view(features.shape[0], *features.shape[2:])


def sharpen(v: torch.Tensor) -> torch.Tensor:
    """ISP's squash of a [0, 1] norm: 1 / (1 + exp(-5 (2 v - 1) - 3))."""
    return torch.sigmoid(10 * v - 2)


def centre_weight(h: int, w: int, strength: float) -> torch.Tensor:
    """(h, w) weights: 1 in the middle half of the columns, linear down to 1 - strength at the edges."""
    cols = (torch.arange(w, dtype=torch.float32) + 0.5) / w  # 0..1
    dist = ((cols - 0.5).abs() - 0.25).clamp_min(0) / 0.25  # 0 in the middle half, 1 at the edges
    return (1 - strength * dist)[None, :].expand(h, w)


def two_means_high(values: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """1-D 2-means over all `values` (any shape); True where a value belongs to the high cluster."""
    v = values.flatten()
    c0, c1 = v.min(), v.max()
    high = torch.ones_like(v, dtype=torch.bool)
    for _ in range(iters):
        high = (v - c1).abs() < (v - c0).abs()
        if high.all() or not high.any():
            break
        c1, c0 = v[high].mean(), v[~high].mean()
    return high.view(values.shape)


def identity_foreground(features: torch.Tensor, centre_prior: float = 0.0) -> torch.Tensor:
    """(n, h, w) bool foreground of the n images (n, d, h, w) of ONE identity, by ISP's rule."""
    norm = features.float().norm(dim=1)  # (n, h, w)
    v = norm / norm.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    v = sharpen(v)
    if centre_prior > 0:
        v = v * centre_weight(*v.shape[1:], centre_prior)
    return two_means_high(v)


def identity_part_labels(
    features: torch.Tensor, fg: torch.Tensor, num_parts: int, seed: int = 0, n_init: int = 2
) -> np.ndarray:
    """(n, h, w) int8 labels 0..p for the n images (n, d, h, w) of one identity, foreground `fg`."""
    n, _, h, w = features.shape
    labels = np.zeros((n, h, w), dtype=np.int8)
    fg_np = fg.cpu().numpy()
    img_idx, rows, cols = np.nonzero(fg_np)
    if len(rows) == 0:
        return labels
    if len(rows) < num_parts:
        labels[img_idx, rows, cols] = (rows * num_parts // h + 1).astype(np.int8)
        return labels
    pix = F.normalize(features.float().permute(0, 2, 3, 1)[fg], dim=1).cpu().numpy().astype(np.float64)
    km = KMeans(n_clusters=num_parts, n_init=n_init, random_state=seed, max_iter=100).fit(pix)
    assign = km.labels_
    mean_row = np.array(
        [rows[assign == c].mean() if (assign == c).any() else np.inf for c in range(num_parts)]
    )
    rank = np.empty(num_parts, dtype=np.int8)
    rank[np.argsort(mean_row, kind="stable")] = np.arange(1, num_parts + 1, dtype=np.int8)
    labels[img_idx, rows, cols] = rank[assign]
    return labels


def label_group(
    feats: torch.Tensor,
    sizes: list[int],
    num_parts: int,
    seed: int = 0,
    foreground_rule: str = "image",
    centre_prior: float = 0.0,
) -> list[np.ndarray]:
    """Part labels of consecutive identities whose images are stacked in `feats` (sizes: images each)."""
    if foreground_rule not in ("image", "identity"):
        raise ValueError(f"unknown foreground rule {foreground_rule!r}: image or identity")
    out, offset = [], 0
    if foreground_rule == "image":
        norm_feats = feats
        if centre_prior > 0:
            norm_feats = feats * centre_weight(*feats.shape[2:], centre_prior)[None, None]
        fg_all = foreground(norm_feats)
    for n in sizes:
        chunk = feats[offset : offset + n]
        if foreground_rule == "image":
            fg = fg_all[offset : offset + n]
        else:
            fg = identity_foreground(chunk, centre_prior)
        out.append(identity_part_labels(chunk, fg, num_parts, seed))
        offset += n
    return out


@torch.no_grad()
def compute_pseudo_labels(
    model: PGRModel,
    samples: Sequence[Sample],
    input_size: tuple[int, int],
    device: torch.device,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
    foreground_rule: str = "image",
    centre_prior: float = 0.0,
) -> np.ndarray:
    """(N, h, w) int8 labels for every training sample, model in eval mode, identity by identity.

    Images are the plain resized crops (no augmentation). Identities are processed in groups of about
    `batch_size` images so that only one group's feature maps are held at a time.
    """
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    by_pid: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_pid.setdefault(s.pid, []).append(i)
    groups: list[list[int]] = [[]]
    for pid in sorted(by_pid):
        if groups[-1] and sum(len(by_pid[q]) for q in groups[-1]) >= batch_size:
            groups.append([])
        groups[-1].append(pid)
    result: np.ndarray | None = None
    for group in tqdm(groups, desc="pseudo labels", unit="group", disable=not progress):
        idx = [i for pid in group for i in by_pid[pid]]
        maps = []
        for start in range(0, len(idx), batch_size):
            crops = [cv2.imread(str(samples[i].path)) for i in idx[start : start + batch_size]]
            maps.append(model.feature_map(crops_to_tensor(crops, input_size, device)).float().cpu())
        feats = torch.cat(maps)
        if result is None:
            result = np.zeros((len(samples), *feats.shape[2:]), dtype=np.int8)
        result_rows = label_group(
            feats,
            [len(by_pid[pid]) for pid in group],
            model.config.num_parts,
            seed,
            foreground_rule,
            centre_prior,
        )
        for pid, labels in zip(group, result_rows, strict=True):
            result[by_pid[pid]] = labels
    model.train(was_training)
    assert result is not None, "no training samples"
    return result
