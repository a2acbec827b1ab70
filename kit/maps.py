"""Small tensor helpers for feature maps and anomaly maps, shared by all methods."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def concat_layers(features: list[torch.Tensor]) -> torch.Tensor:
    """Upsample each ``[B, C_i, H_i, W_i]`` to the first map's size and concatenate: ``[B, sum C_i, H_0, W_0]``."""
    size = features[0].shape[-2:]
    resized = [features[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                               for f in features[1:]]
    return torch.cat(resized, dim=1)


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, h, w]`` -> ``[B, size, size]`` by bilinear interpolation."""
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``[B, H, W]`` (or ``[B, C, H, W]``) with a Gaussian of ``sigma`` pixels (reflect padding).

    Separable 1-D kernels truncated at 4 sigma, as scipy does; differentiable, so DifferNet's
    gradient maps can be blurred the same way.
    """
    if sigma <= 0:
        return maps
    squeeze = maps.dim() == 3
    x = maps[:, None] if squeeze else maps
    radius = max(1, int(math.ceil(4 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    kx = kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kx, groups=c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), ky, groups=c)
    return x[:, 0] if squeeze else x
