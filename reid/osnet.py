"""OSNet (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019), written here
from the paper, with parameter names that match torchreid's so that its released state dicts load strictly.

Omni-scale residual block (the paper's Fig. 4): a 1x1 reduction to out/4 channels; four streams of 1, 2, 3
and 4 stacked "lite 3x3" layers (1x1 pointwise then 3x3 depthwise, BN, ReLU), i.e. receptive fields of
3, 5, 7 and 9; one shared unified aggregation gate (global pooling, two 1x1 convs with reduction 16,
sigmoid) scales each stream's channels; the gated streams are summed, expanded back by a linear 1x1, and
added to the (projected) input. Stages: 7x7 conv stride 2, 3x3 max pool stride 2, then three stages of two
blocks each, the first two followed by a 1x1 conv and 2x2 average pooling (transition), and a last 1x1
conv (conv5). The output stride is 16: a 256x128 crop gives the 16 x 8 map PGR needs as is.

`embedding` is the network's own re-ID feature: global average pooling of conv5, then fc (linear, BN, ReLU)
to 512-d, as torchreid trains it; the ID classifier of the source dataset is dropped.

>>> net = OSNet.x0_25()
>>> x = net(torch.zeros(2, 3, 256, 128))
>>> tuple(x.shape), tuple(net.embedding(x).shape)
((2, 128, 16, 8), (2, 512))
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pgr.model_files import require_model_file


class ConvLayer(nn.Module):
    """conv (kxk, any stride) + BN + ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Conv1x1(ConvLayer):
    """1x1 conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 1)


class Conv1x1Linear(nn.Module):
    """1x1 conv + BN, no activation (the block's expansion and its shortcut projection)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class LightConv3x3(nn.Module):
    """The paper's "lite 3x3": 1x1 pointwise conv, then 3x3 depthwise conv, BN, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False, groups=cout)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """Unified aggregation gate: channel weights in (0, 1) from the stream's globally pooled features."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, max(1, channels // reduction), 1)
        self.fc2 = nn.Conv2d(max(1, channels // reduction), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(w)


def _stream(channels: int, depth: int) -> nn.Module:
    if depth == 1:
        return LightConv3x3(channels, channels)
    return nn.Sequential(*(LightConv3x3(channels, channels) for _ in range(depth)))


class OSBlock(nn.Module):
    """Omni-scale residual bottleneck (four streams of depth 1-4 sharing one aggregation gate)."""

    def __init__(self, cin: int, cout: int, bottleneck_reduction: int = 4) -> None:
        super().__init__()
        mid = cout // bottleneck_reduction
        self.conv1 = Conv1x1(cin, mid)
        self.conv2a = _stream(mid, 1)
        self.conv2b = _stream(mid, 2)
        self.conv2c = _stream(mid, 3)
        self.conv2d = _stream(mid, 4)
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, cout)
        self.downsample = Conv1x1Linear(cin, cout) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        y = sum(self.gate(stream(y)) for stream in (self.conv2a, self.conv2b, self.conv2c, self.conv2d))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv3(y) + identity)


def _stage(blocks: int, cin: int, cout: int, transition: bool) -> nn.Sequential:
    layers: list[nn.Module] = [OSBlock(cin, cout)]
    layers += [OSBlock(cout, cout) for _ in range(blocks - 1)]
    if transition:
        layers.append(nn.Sequential(Conv1x1(cout, cout), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)


class OSNet(nn.Module):
    """OSNet feature extractor: `forward` gives the conv5 map (output stride 16), `embedding` pools it."""

    def __init__(
        self,
        channels: tuple[int, int, int, int],
        blocks: tuple[int, int, int] = (2, 2, 2),
        feature_dim: int = 512,
    ) -> None:
        super().__init__()
        self.conv1 = ConvLayer(3, channels[0], 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(blocks[0], channels[0], channels[1], transition=True)
        self.conv3 = _stage(blocks[1], channels[1], channels[2], transition=True)
        self.conv4 = _stage(blocks[2], channels[2], channels[3], transition=False)
        self.conv5 = Conv1x1(channels[3], channels[3])
        self.fc = nn.Sequential(nn.Linear(channels[3], feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU())
        self.channels = channels[3]
        self.feature_dim = feature_dim

    @classmethod
    def x0_25(cls) -> OSNet:
        """OSNet x0.25: a quarter of OSNet x1.0's channels (16, 64, 96, 128)."""
        return cls((16, 64, 96, 128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))

    def embedding(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The network's own re-ID feature (n, 512) from its map: global average pooling, then fc."""
        return self.embed_pooled(feature_map.mean(dim=(2, 3)))

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """fc (linear, BN, ReLU) on an already pooled (n, channels) feature: (n, 512)."""
        return self.fc(pooled)


def load_torchreid_state(net: OSNet, weights: Path) -> None:
    """Load a torchreid OSNet state dict strictly (its source-dataset classifier, and a DataParallel
    `module.` prefix, are dropped); a mismatch raises with the offending keys."""
    path = require_model_file(weights, "OSNet weights")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: not an OSNet state dict of this size: {exc}") from None
