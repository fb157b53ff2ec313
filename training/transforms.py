"""Training augmentation for BGR uint8 crops (or PIL images), aligned with a feature-map label map.

resize to (H, W) -> random horizontal flip -> zero-pad `pad` px + random crop back to (H, W) -> RGB,
ImageNet normalisation (what `reid.extractor.crops_to_tensor` gives at inference; the EfficientNet-Lite0
backbone converts ImageNet-normalised input to its [-1, 1] range itself) -> random erasing (the erased
box is set to 0, i.e. the ImageNet mean). Every random draw comes from the `torch.Generator` passed in.

The pseudo label map of the crop (feature-map cells, -1 = ignore) goes through the same flip and crop:
it is expanded to pixels, transformed, and read back at the cell centres; padded cells become -1.
Random erasing does not change the labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from reid.extractor import IMAGENET_MEAN, IMAGENET_STD

IGNORE = -1


@dataclass(frozen=True)
class TrainTransform:
    """Callable: (image, labels or None, generator) -> (image (3, H, W) float, labels (h, w) long)."""

    size: tuple[int, int]  # (H, W) network input
    label_size: tuple[int, int]  # (h, w) feature map
    flip_p: float = 0.5
    pad: int = 10
    erase_p: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    def __call__(
        self, image: np.ndarray | Image.Image, labels: np.ndarray | None, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = self.size
        lh, lw = self.label_size
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))[:, :, ::-1]
        img = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        cell_h, cell_w = height // lh, width // lw
        if labels is None:
            lab = np.full((height, width), IGNORE, dtype=np.int64)
        else:
            lab = np.repeat(np.repeat(labels.astype(np.int64), cell_h, axis=0), cell_w, axis=1)
            lab = np.pad(lab, ((0, height - lab.shape[0]), (0, width - lab.shape[1])), constant_values=IGNORE)
        if torch.rand(1, generator=gen).item() < self.flip_p:
            img, lab = img[:, ::-1], lab[:, ::-1]
        if self.pad > 0:
            p = self.pad
            img = np.pad(img, ((p, p), (p, p), (0, 0)))
            lab = np.pad(lab, ((p, p), (p, p)), constant_values=IGNORE)
            top = int(torch.randint(0, 2 * p + 1, (1,), generator=gen))
            left = int(torch.randint(0, 2 * p + 1, (1,), generator=gen))
            img = img[top : top + height, left : left + width]
            lab = lab[top : top + height, left : left + width]
        x = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1])).permute(2, 0, 1).float().div_(255)
        x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        if torch.rand(1, generator=gen).item() < self.erase_p:
            self._erase(x, gen)
        cells = np.ascontiguousarray(lab[cell_h // 2 :: cell_h, cell_w // 2 :: cell_w][:lh, :lw])
        return x, torch.from_numpy(cells)

    def _erase(self, x: torch.Tensor, gen: torch.Generator) -> None:
        """Zero one random box (area and aspect ratio in the configured ranges) in place; 10 tries."""
        _, height, width = x.shape
        lo, hi = (math.log(r) for r in self.erase_ratio)
        for _ in range(10):
            u = torch.rand(2, generator=gen).tolist()
            area = height * width * (self.erase_area[0] + u[0] * (self.erase_area[1] - self.erase_area[0]))
            ratio = math.exp(lo + u[1] * (hi - lo))
            h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < h < height and 0 < w < width:
                top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
                left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
                x[:, top : top + h, left : left + w] = 0
                return
