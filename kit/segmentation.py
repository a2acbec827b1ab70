"""Multi-scale defect segmentation heads (NDP-Net's MSDSM, Luo, Yao, Yu 2023, sec. III-D).

The input image and its reconstruction go through the encoder's first three stages; at each
stage their features are concatenated, ``C_F_i = [Phi_i(I), Phi_i(I_b)]``, and a small head
DSM_i turns them into a defect logit per position. Fine stages see edges but are noisy, coarse
ones are sure but blurred; eq. 11 adds the three probability maps upsampled to the image,

    AM_final = l_1 g(AM_1) + l_2 g(AM_2) + l_3 g(AM_3),   l = (0.2, 0.2, 0.6).

The paper's Fig. 6 (the heads' layers) is not in its text. Ours: each DSM_i is
3x3 conv-BN-ReLU, 3x3 conv-BN-ReLU, 1x1 conv, with a width per stage (narrow at stride 2,
where positions are many, wider deeper) so the three cost about the same.
Shapes: ``forward([C_F_1, C_F_2, C_F_3]) -> [[B, H_i, W_i] logits]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _head(c_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, 1, 1))


class MultiScaleSegmentation(nn.Module):
    """One DSM head per scale: ``in_channels[i]`` (the concatenated pair) -> one logit map."""

    def __init__(self, in_channels: Sequence[int], hidden: Sequence[int]):
        super().__init__()
        if len(in_channels) != len(hidden):
            raise ValueError(f"one hidden width per scale: {list(in_channels)} vs {list(hidden)}")
        self.heads = nn.ModuleList(_head(int(c), int(h)) for c, h in zip(in_channels, hidden))

    def forward(self, pairs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [head(x)[:, 0] for head, x in zip(self.heads, pairs)]
