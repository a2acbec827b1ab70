"""Feature mapping between two feature spaces, shared by B-PFM, MB-PFM and NF-BMR.

The idea (Wan et al., TII 2022): two spaces describe the same image position, a source space
``Y`` (a pretrained CNN's features) and a target space ``Z`` (a second CNN's, or for NF-BMR a
normalizing flow's latent of ``Y``). A small network learns, on normal images only, to map
each space onto the other. On a defect the mapping has never seen the pair it must carry
across, so the residuals are large:

    z^MT = TMNN(y)      y^MS = SMNN(z)                                  (NF-BMR eq. 9-10)
    loss = MSE(z^MT, z) + MSE(y^MS, y)                                  (eq. 11-13)
    ASM(i, j) = 1/2 (||y_ij - y^MS_ij||^2 + ||z_ij - z^MT_ij||^2)       (eq. 14, per position)

Two mapping networks, both ``forward(y [B, C_s, H, W], z [B, C_t, H, W]) -> (z^MT, y^MS)``:

- :class:`PfmMapping`: B-PFM's, five 1x1 conv layers per direction (Conv-BN-ReLU), the middle
  one shared by both directions, as its public code builds it;
- :class:`ResidualMapping`: NF-BMR's BMR, ``n`` residual blocks (1x1-3x3-1x1, each conv
  followed by ReLU) on each side of one shared block, between an input and an output conv.

:func:`residual_maps` turns a mapping's outputs into the per-position maps, and
:func:`fit_mapping` trains either network on cached feature pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kit.training import adam_epochs

MAPPINGS = ("bmr", "pfm")


def unit_positions(f: torch.Tensor) -> torch.Tensor:
    """B-PFM's feature normalisation: each position's feature vector scaled to unit L2 norm
    over the channels. ``[B, C, H, W]`` in and out."""
    return F.normalize(f, dim=1)


class ChannelStandardizer(nn.Module):
    """Per-channel ``(f - mean) / std`` with the statistics of the training features.

    NF-BMR's flow is trained on the source features; unit-variance channels keep its first
    steps stable and put ``Y`` on the same scale as the flow's ``Z ~ N(0, I)``, so neither
    residual of eq. 14 drowns the other. ``forward([B, C, H, W]) -> [B, C, H, W]``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> "ChannelStandardizer":
        """Set the statistics from ``features [N, C, H, W]`` (every position of every image)."""
        flat = features.transpose(0, 1).flatten(1).double()
        self.mean.copy_(flat.mean(1).view_as(self.mean))
        self.std.copy_(flat.std(1).clamp_min(1e-6).view_as(self.std))
        return self

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.mean) / self.std


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class PfmMapping(nn.Module):
    """B-PFM's bidirectional 1x1 mapping. Per direction: in, hidden, *shared latent*, hidden
    (each 1x1 Conv-BN-ReLU), then a plain 1x1 conv out, five layers in all."""

    def __init__(self, source_channels: int, target_channels: int, hidden: int):
        super().__init__()
        shared = _conv_bn_relu(hidden, hidden)
        self.to_target = nn.Sequential(_conv_bn_relu(source_channels, hidden), _conv_bn_relu(hidden, hidden),
                                       shared, _conv_bn_relu(hidden, hidden),
                                       nn.Conv2d(hidden, target_channels, 1))
        self.to_source = nn.Sequential(_conv_bn_relu(target_channels, hidden), _conv_bn_relu(hidden, hidden),
                                       shared, _conv_bn_relu(hidden, hidden),
                                       nn.Conv2d(hidden, source_channels, 1))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z^MT [B, C_t, H, W], y^MS [B, C_s, H, W])``."""
        return self.to_target(y), self.to_source(z)


class ResidualBlock(nn.Module):
    """NF-BMR's residual block: ``x + relu(1x1(relu(3x3(relu(1x1(x))))))`` on ``[B, C, H, W]``.

    The paper gives the 1x1-3x3-1x1 sequence with ReLU after every conv and a latent width of
    1024, not the inner width; ours narrows to ``C / bottleneck`` inside, as ResNet's
    bottleneck does (the 3x3 conv of a 1024-wide block would cost 9.4 M weights alone).
    """

    def __init__(self, channels: int, bottleneck: int = 4):
        super().__init__()
        inner = max(1, channels // bottleneck)
        self.body = nn.Sequential(
            nn.Conv2d(channels, inner, 1), nn.ReLU(inplace=True),
            nn.Conv2d(inner, inner, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(inner, channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualMapping(nn.Module):
    """NF-BMR's BMR (Fig. 4): TMNN maps ``Y -> Z`` and SMNN ``Z -> Y``. Each is an input 1x1
    conv (to ``latent`` channels), ``n`` residual blocks, the block both share, ``n`` more
    blocks and an output 1x1 conv."""

    def __init__(self, source_channels: int, target_channels: int, latent: int, n: int,
                 bottleneck: int = 4):
        super().__init__()
        shared = ResidualBlock(latent, bottleneck)

        def side(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, latent, 1),
                                 *[ResidualBlock(latent, bottleneck) for _ in range(n)], shared,
                                 *[ResidualBlock(latent, bottleneck) for _ in range(n)],
                                 nn.Conv2d(latent, c_out, 1))

        self.tmnn = side(source_channels, target_channels)
        self.smnn = side(target_channels, source_channels)

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z^MT = TMNN(y) [B, C_t, H, W], y^MS = SMNN(z) [B, C_s, H, W])``."""
        return self.tmnn(y), self.smnn(z)


def build_mapping(kind: str, source_channels: int, target_channels: int, latent: int, n: int = 2,
                  bottleneck: int = 4) -> nn.Module:
    """``"bmr"``: :class:`ResidualMapping`; ``"pfm"``: :class:`PfmMapping` (``n`` unused)."""
    if kind == "bmr":
        return ResidualMapping(source_channels, target_channels, latent, n, bottleneck)
    if kind == "pfm":
        return PfmMapping(source_channels, target_channels, latent)
    raise ValueError(f"mapping={kind!r}: use one of {MAPPINGS}")


def residual_maps(y: torch.Tensor, z: torch.Tensor, z_mapped: torch.Tensor,
                  y_mapped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(forward, backward)`` squared residuals summed over channels, ``[B, H, W]`` each:
    ``||z - z^MT||^2`` (source mapped into the target space) and ``||y - y^MS||^2``."""
    return (z - z_mapped).pow(2).sum(1), (y - y_mapped).pow(2).sum(1)


def fit_mapping(mapping: nn.Module, y: torch.Tensor, z: torch.Tensor, epochs: int, lr: float,
                weight_decay: float, batch_size: int, gen: torch.Generator, device: torch.device,
                progress: bool = True, desc: str = "mapping",
                on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``mapping`` with Adam on eq. 13, ``MSE(z^MT, z) + MSE(y^MS, y)``, on the cached
    pairs ``y [N, C_s, H, W]``, ``z [N, C_t, H, W]`` of the N training images (CPU), in batches
    drawn in a seeded order. Returns the mean loss of every epoch."""
    def batch_loss(idx: torch.Tensor, epoch: int) -> torch.Tensor:
        yb, zb = y[idx].to(device), z[idx].to(device)
        z_mapped, y_mapped = mapping(yb, zb)
        loss = F.mse_loss(z_mapped, zb) + F.mse_loss(y_mapped, yb)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: the mapping loss is {float(loss)} in epoch "
                                     f"{epoch + 1}; lower its learning rate (now {lr:g})")
        return loss

    return adam_epochs(mapping, y.shape[0], batch_loss, epochs, lr, weight_decay, batch_size, gen,
                       progress, desc, "loss", on_epoch)


def gaussianity(x: torch.Tensor) -> dict[str, float]:
    """How far the feature vectors ``x [N, C]`` are from ``N(0, I)``, in three numbers that are
    0 for a standard normal: the mean |off-diagonal correlation| between channels, the mean
    |skewness| and the mean |excess kurtosis| of the channels. (NF-BMR's argument: a flow's
    target space is simple where a CNN's is not.)"""
    x = x.double()
    centred = x - x.mean(0)
    std = centred.std(0).clamp_min(1e-12)
    u = centred / std
    corr = (u.T @ u) / (x.shape[0] - 1)
    c = corr.shape[0]
    off = (corr.abs().sum() - corr.diagonal().abs().sum()) / max(1, c * (c - 1))
    return {"mean_abs_correlation": float(off), "mean_abs_skewness": float(u.pow(3).mean(0).abs().mean()),
            "mean_abs_excess_kurtosis": float((u.pow(4).mean(0) - 3).abs().mean())}
