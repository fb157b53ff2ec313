"""Feature extractors: BGR person crops in, per-crop features out.

Every extractor, the spine's ImageNet placeholder and the PGR model alike, implements `FeatureExtractor`,
so the worker, the search command and the benchmarks never know which one they hold. `CropFeatures`, the
per-crop result, lives with the records in pgr.messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from pgr.messages import CropFeatures
from pgr.model_files import require_model_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureExtractor(Protocol):
    """What the re-ID worker and the search command need from a model."""

    name: str

    def extract(self, crops: list[np.ndarray]) -> list[CropFeatures]:
        """Features for a batch of BGR uint8 crops of any size."""
        ...


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' takes the GPU when one is present, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"reid.device {requested}: no such CUDA device ({count} available)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"reid.device {requested}: MPS is not available here")
    return device


def crops_to_tensor(crops: list[np.ndarray], size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Resize BGR crops to (height, width), convert to RGB, ImageNet-normalise: (n, 3, h, w) float."""
    h, w = size
    batch = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR)[:, :, ::-1] for c in crops])
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def load_ordered_state(module: torch.nn.Module, weights: Path) -> None:
    """Load a state dict whose tensors are in the module's order, whatever their key prefix."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    target = module.state_dict()
    if len(state) != len(target):
        raise ValueError(f"{weights}: {len(state)} tensors, the model expects {len(target)}")
    remapped = {}
    for (key, want), (src_key, tensor) in zip(target.items(), state.items(), strict=True):
        if tensor.shape != want.shape:
            raise ValueError(
                f"{weights}: tensor {src_key} is {tuple(tensor.shape)}, {key} needs {tuple(want.shape)}"
            )
        remapped[key] = tensor
    module.load_state_dict(remapped)


class ImageNetMobileNetV2Extractor:
    """The spine's placeholder: ImageNet MobileNetV2 features, global average pooled, L2-normalised.

    >>> ex = ImageNetMobileNetV2Extractor(Path("mobilenetv2_imagenet_features.pt"))  # doctest: +SKIP
    >>> ex.extract([crop])[0].instance.shape  # doctest: +SKIP
    (1280,)
    """

    name = "mobilenetv2-imagenet-gap"

    def __init__(self, weights: Path, device: str = "auto", input_size: tuple[int, int] = (256, 128)) -> None:
        self.device = pick_device(device)
        self.input_size = input_size
        net = torchvision.models.mobilenet_v2().features
        load_ordered_state(net, require_model_file(weights, "MobileNetV2 ImageNet features"))
        self.net = net.eval().to(self.device).to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def extract(self, crops: list[np.ndarray]) -> list[CropFeatures]:
        if not crops:
            return []
        x = crops_to_tensor(crops, self.input_size, self.device)
        fmap = self.net(x)
        inst = F.normalize(fmap.mean(dim=(2, 3)), dim=1).float().cpu().numpy()
        return [CropFeatures(instance=v) for v in inst]
