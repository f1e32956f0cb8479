"""Classification modules ``g`` of the net (Figure 1), by name in :data:`HEADS` (``ModelConfig.head``).

``aspp-v2`` (the paper's, DeepLab v2, Chen et al. TPAMI 2018): parallel 3x3 atrous convs on
the deepest features, each producing class logits, summed. Rates (6, 12, 18, 24) at output
stride 8, scaled by ``8 / os`` ((3, 6, 9, 12) at 16). Logits at stride ``os``.

``deeplabv3+`` (Chen et al. ECCV 2018, a recipe for small budgets): ASPP v3 (1x1, three
separable atrous 3x3 convs, image pooling; ``decoder_channels`` each, BN + ReLU) on the
deepest features, upsampled and fused with a 48-channel projection of the backbone's
stride-``low_level_stride`` tap (4 or 8), two separable 3x3 convs, then a 1x1 classifier.
Rates (12, 24, 36) at output stride 8 = (6, 12, 18) at 16. Logits at stride
``low_level_stride``.

Labels use ignore index 255; logits are ``[B, C, h, w]`` at the stride given above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: DeepLab v2 ASPP rates, expressed at output stride 8.
DEEPLAB_V2_RATES = (6, 12, 18, 24)
#: DeepLab v3(+) ASPP rates, expressed at output stride 8 ((6, 12, 18) at 16).
DEEPLAB_V3_RATES = (12, 24, 36)


def aspp_dilations(rates: Sequence[int], output_stride: int) -> tuple[int, ...]:
    """ASPP rates given at output stride 8 -> dilations at ``output_stride`` (same field of view)."""
    return tuple(max(1, round(r * 8 / output_stride)) for r in rates)


class ASPPClassifier(nn.Module):
    """DeepLab v2 ASPP classification module ``g``: ``[B, D, h, w] -> [B, C, h, w]`` logits.

    One 3x3 conv (with bias) per dilation, each mapping features straight to class logits; the
    branch outputs are summed. Weights ~ N(0, 0.01) and zero bias, DeepLab's initialisation, so
    the untrained sum starts near zero logits.
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int]):
        super().__init__()
        self.dilations = tuple(dilations)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in self.dilations
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def _separable(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (atrous) + pointwise 1x1, each with BN + ReLU: DeepLabv3+'s cheap 3x3 conv."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False),
        nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


def _pointwise(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DeepLabV3PlusHead(nn.Module):
    """DeepLabv3+ head: ASPP v3 on the deepest features, fused with one low-level tap.

    ``forward(deep [B, D, h, w], low [B, c_low, H/s, W/s]) -> (logits [B, C, H/s, W/s],
    features [B, channels, H/s, W/s])`` where ``features`` are what the 1x1 classifier reads.
    Image pooling is a global average, so the head works at any input size (BN sees one value
    per image there; at batch 1 in training PyTorch refuses it, like torchvision's DeepLabv3).
    """

    def __init__(self, in_channels: int, low_channels: int, num_classes: int, dilations: Sequence[int],
                 channels: int = 128, low_proj: int = 48):
        super().__init__()
        self.dilations = tuple(dilations)
        self.aspp = nn.ModuleList([_pointwise(in_channels, channels)]
                                  + [_separable(in_channels, channels, d) for d in self.dilations])
        self.pool = _pointwise(in_channels, channels)
        self.project = nn.Sequential(_pointwise(channels * (len(self.aspp) + 1), channels), nn.Dropout(0.1))
        self.low = _pointwise(low_channels, low_proj)
        self.fuse = nn.Sequential(_separable(channels + low_proj, channels), _separable(channels, channels))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, deep: Tensor, low: Tensor) -> tuple[Tensor, Tensor]:
        h, w = deep.shape[-2:]
        pooled = self.pool(deep.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, h, w)
        x = self.project(torch.cat([branch(deep) for branch in self.aspp] + [pooled], dim=1))
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        features = self.fuse(torch.cat([x, self.low(low)], dim=1))
        return self.classifier(features), features


@dataclass(frozen=True)
class HeadSpec:
    """A head of the registry: its default ASPP rates (at output stride 8) and whether it reads a
    low-level tap (then ``PointParseNet`` calls ``backbone.forward_features``)."""

    rates: tuple[int, ...]
    decoder: bool


#: name -> HeadSpec. ``aspp-v2`` is the paper's; ``deeplabv3+`` the decoder for small budgets.
HEADS: dict[str, HeadSpec] = {
    "aspp-v2": HeadSpec(DEEPLAB_V2_RATES, decoder=False),
    "deeplabv3+": HeadSpec(DEEPLAB_V3_RATES, decoder=True),
}
