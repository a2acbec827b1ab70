"""CLS-CNFs' pixelwise classifier head: a U-Net decoder on a shared encoder's feature maps.

The encoder (a ``FeatureExtractor`` with ``trainable=True``) gives maps at strides 8, 16 and
32 (CLS-CNFs: WideResNet-50-2 layer2-4; here the Lite stages that CFlow-AD's flows read). The
decoder mirrors it with a quarter of the channels (CLS-CNFs sec. III-B-2 and its code):

    stride 32:  transition 1x1-ReLU-1x1-ReLU (C_32 -> C_32 / 2)
    x2, concat the stride-16 map, bottlenecks -> C_16 / 4       (skip 1)
    x2, concat the stride-8 map,  bottlenecks -> C_8 / 4        (skip 2)
    x2, bottlenecks; x2, bottlenecks; x2 to the input size
    output block: 3x3 conv - BN - ReLU - 3x3 conv -> one logit (defect) or 3 values (FE_REG)

``out_stride=4`` (ours, for CPU budgets) puts the output block on the stride-4 stage and
upsamples its output bilinearly to the input size.

With Lite0's narrow stages a quarter is a handful of channels, so every width has a floor
(``min_channels``). The number of bottlenecks per stage is the code's (3, 6, 4, 3) unless set.
Shapes: maps ``[B, C_i, H/s_i, W/s_i]`` shallow to deep; output ``[B, out, S, S]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 convolutions with BatchNorm and a residual path: ``[B, c_in, H, W] ->
    [B, c_out, H, W]`` (a 1x1 projection on the shortcut when the widths differ)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = max(8, c_out // 2)
        self.body = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _stage(c_in: int, c_out: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[Bottleneck(c_in if i == 0 else c_out, c_out) for i in range(max(1, blocks))])


def _up(x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    size = size or (x.shape[-2] * 2, x.shape[-1] * 2)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PixelDecoder(nn.Module):
    """The decoder: ``forward(maps, size) -> [B, out_channels, size, size]`` (raw values: logits
    for the classifier, pre-sigmoid intensities for the FE_REG reconstruction)."""

    def __init__(self, enc_channels: Sequence[int], out_channels: int = 1, ratio: float = 0.25,
                 min_channels: int = 16, blocks: Sequence[int] = (3, 6, 4, 3), out_stride: int = 1):
        super().__init__()
        if out_stride not in (1, 4):
            raise ValueError(f"out_stride must be 1 (the paper's full-resolution output) or 4, "
                             f"got {out_stride}")
        self.out_stride = out_stride
        if len(enc_channels) != 3 or len(blocks) != 4:
            raise ValueError(f"the decoder takes 3 encoder maps (strides 8, 16, 32) and 4 stage "
                             f"depths, got {list(enc_channels)} and {list(blocks)}")
        c8, c16, c32 = (int(c) for c in enc_channels)

        def width(c: float) -> int:
            return max(min_channels, int(round(c)))

        mid = width(c32 / 2)
        self.transition = nn.Sequential(nn.Conv2d(c32, mid, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(mid, mid, 1), nn.ReLU(inplace=True))
        w16, w8 = width(c16 * ratio), width(c8 * ratio)
        w4, w2 = width(w8 / 2), width(w8 / 4)
        self.up16 = _stage(mid + c16, w16, blocks[0])
        self.up8 = _stage(w16 + c8, w8, blocks[1])
        self.up4 = _stage(w8, w4, blocks[2])
        # out_stride 4 ends at the stride-4 stage and upsamples the output bilinearly: the two
        # full-resolution stages are most of a training step's cost on a CPU
        self.up2 = _stage(w4, w2, blocks[3]) if out_stride == 1 else None
        last = w2 if out_stride == 1 else w4
        self.head = nn.Sequential(nn.Conv2d(last, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=True), nn.Conv2d(8, out_channels, 3, padding=1))

    def forward(self, maps: Sequence[torch.Tensor], size: int) -> torch.Tensor:
        m8, m16, m32 = maps
        x = self.transition(m32)
        x = self.up16(torch.cat([_up(x, m16.shape[-2:]), m16], 1))
        x = self.up8(torch.cat([_up(x, m8.shape[-2:]), m8], 1))
        x = self.up4(_up(x))
        if self.up2 is None:
            return _up(self.head(x), (size, size))
        return self.head(_up(self.up2(_up(x)), (size, size)))
