"""Figures the evaluator writes: CMC curves, learned parts on images (paper Fig. 4a) and mined pixel
correspondences between two images (paper Fig. 4b). matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pgr.messages import CropFeatures  # noqa: E402
from reid.similarity import PIXEL_EPS, pixel_matches  # noqa: E402

# Background transparent, parts 1..5 top to bottom: red, orange, yellow, green, blue (more cycle).
PART_COLOURS = (
    np.array(
        [
            [0, 0, 0],
            [228, 26, 28],
            [255, 127, 0],
            [255, 221, 51],
            [77, 175, 74],
            [55, 126, 184],
            [152, 78, 163],
        ],
        dtype=np.float32,
    )
    / 255
)


def _rgb(image_bgr: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    return cv2.cvtColor(cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)


def plot_cmc(curves: Mapping[str, np.ndarray], path: Path, title: str, max_rank: int = 20) -> Path:
    """CMC curves (fraction matched within rank k, k = 1..max_rank), one line per ranking."""
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    ranks = np.arange(1, max_rank + 1)
    for name, cmc in curves.items():
        ax.plot(ranks, 100 * np.asarray(cmc)[:max_rank], marker="o", markersize=3, label=name)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([1, 5, 10, 15, 20][: 1 + max_rank // 5])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def colour_parts(labels: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and an alpha mask (background 0) of a (h, w) label map, upsampled to size_hw."""
    h, w = size_hw
    up = cv2.resize(labels.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    colours = PART_COLOURS[np.where(up == 0, 0, (up - 1) % (len(PART_COLOURS) - 1) + 1)]
    return colours, (up > 0).astype(np.float32)


def plot_parts(
    images_bgr: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    path: Path,
    size_hw: tuple[int, int] = (256, 128),
    title: str = "",
) -> Path:
    """Each image above its learned part map (psi, as `cell_labels` decides; background left uncoloured)."""
    n = len(images_bgr)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 5.4), dpi=120, squeeze=False)
    for col, (image, lab) in enumerate(zip(images_bgr, labels, strict=True)):
        rgb = _rgb(image, size_hw).astype(np.float32) / 255
        colours, alpha = colour_parts(lab, size_hw)
        overlay = rgb * (1 - 0.6 * alpha[..., None]) + colours * 0.6 * alpha[..., None]
        axes[0, col].imshow(rgb)
        axes[1, col].imshow(overlay)
        for row in (0, 1):
            axes[row, col].axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def correspondences(
    query: CropFeatures, gallery: CropFeatures, eps: float = PIXEL_EPS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixel pairs s_pixel keeps: query cells (k, 2), gallery cells (k, 2) as (row, col), cosines (k,)."""
    assert query.pixels is not None and query.pixel_coords is not None
    assert gallery.pixels is not None and gallery.pixel_coords is not None
    if len(query.pixels) == 0 or len(gallery.pixels) == 0:  # no foreground cell on one side: no pairs
        return np.zeros((0, 2), np.int16), np.zeros((0, 2), np.int16), np.zeros(0, np.float32)
    xq = torch.nn.functional.normalize(torch.from_numpy(query.pixels).float(), dim=-1)[None]
    xg = torch.nn.functional.normalize(torch.from_numpy(gallery.pixels).float(), dim=-1)[None]
    cq = torch.from_numpy(query.pixel_coords.astype(np.float32))[None]
    mq = torch.ones(xq.shape[:2], dtype=torch.bool)
    mg = torch.ones(xg.shape[:2], dtype=torch.bool)
    best, j_star, keep = pixel_matches(xq, cq, mq, xg, mg, eps)
    keep, j_star, best = keep[0].numpy(), j_star[0].numpy(), best[0].numpy()
    return query.pixel_coords[keep], gallery.pixel_coords[j_star[keep]], best[keep]


def plot_correspondences(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, CropFeatures, CropFeatures, str]],
    path: Path,
    grid_hw: tuple[int, int],
    size_hw: tuple[int, int] = (256, 128),
    max_lines: int = 40,
) -> Path:
    """For each (query image, gallery image, query features, gallery features, caption): the two images
    side by side and lines between the cells of the pixel pairs s_pixel keeps (the most similar
    `max_lines`, coloured by cosine)."""
    h, w = size_hw
    cell_h, cell_w = h / grid_hw[0], w / grid_hw[1]
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.0 * len(pairs), 3.6), dpi=120, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, (img_q, img_g, f_q, f_g, caption) in zip(axes[0], pairs, strict=True):
        ax.imshow(np.concatenate([_rgb(img_q, size_hw), _rgb(img_g, size_hw)], axis=1))
        src, dst, cos = correspondences(f_q, f_g)
        order = np.argsort(-cos)[:max_lines]
        for k in order:
            y0, x0 = (src[k, 0] + 0.5) * cell_h, (src[k, 1] + 0.5) * cell_w
            y1, x1 = (dst[k, 0] + 0.5) * cell_h, w + (dst[k, 1] + 0.5) * cell_w
            ax.plot([x0, x1], [y0, y1], color=cmap(float(np.clip(cos[k], 0, 1))), linewidth=0.8)
            ax.plot([x0, x1], [y0, y1], "o", color="white", markersize=1.5)
        ax.set_title(
            f"{caption}\n{len(cos)} kept pairs, mean cos {cos.mean() if len(cos) else 0:.2f}", fontsize=7
        )
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
