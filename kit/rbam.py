"""NDP-Net's reference-based attention module (RBAM, Luo, Yao, Yu 2023, sec. III-C).

A defective feature map is rebuilt from the feature patches of one fixed normal reference
image, so what comes out can only contain normal texture:

RBFRM (eq. 3-5): cut the input map ``F_ad`` and the reference map ``F_ref`` (both ``[C, H, W]``)
into non-overlapping ``K x K`` patches ``p_i`` and ``b_j``; then

    S_ij = <p_i / ||p_i||, b_j / ||b_j||>        cosine similarity          (eq. 3)
    S_ij <- softmax_j(scale * S_ij)                                           (eq. 4, scale = 1)
    p_i  <- sum_j S_ij b_j                       the repaired patch          (eq. 5)

FFM (eq. 6-8), a selective-kernel fusion: ``U = F_ad + F_rep2 + F_rep4``; an ``m x m`` conv
compresses it to 64 channels; three ``m x m`` convs give one attention logit per branch, channel
and position; a softmax over the branches weighs ``F_rep4``, ``F_rep2`` and ``F_ad``. Large
``K`` suppresses defects better but leaves a checkerboard; the fusion lets the network keep
``F_ad`` where it is normal and take the repair where it is not.

Shapes: ``forward(features [B, C, H, W], reference [1, C, H, W]) -> [B, C, H, W]``. Sides that
``K`` does not divide are padded by replication and cropped back (ours; the paper uses 256 px
inputs, whose maps K divides).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _patches(x: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, C, H, W]`` (H, W multiples of ``k``) -> ``[B, C k k, N]`` non-overlapping patches,
    as ``F.unfold(x, k, stride=k)`` lays them out. A reshape, not unfold, as is
    :func:`_unpatches`: the same values, and fold has no ONNX export."""
    b, c, h, w = x.shape
    blocks = x.reshape(b, c, h // k, k, w // k, k).permute(0, 1, 3, 5, 2, 4)  # [B, C, k, k, H/k, W/k]
    return blocks.reshape(b, c * k * k, (h // k) * (w // k))


def _unpatches(p: torch.Tensor, k: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`_patches`: ``[B, C k k, N]`` -> ``[B, C, h, w]``."""
    b = p.shape[0]
    blocks = p.reshape(b, -1, k, k, h // k, w // k).permute(0, 1, 4, 2, 5, 3)  # [B, C, H/k, k, W/k, k]
    return blocks.reshape(b, -1, h, w)


def reference_repair(features: torch.Tensor, reference: torch.Tensor, k: int,
                     scale: float = 1.0) -> torch.Tensor:
    """RBFRM, eq. 3-5: every ``k x k`` patch of ``features [B, C, H, W]`` replaced by the
    softmax(``scale`` x cosine)-weighted mean of the reference's patches (``reference [1, C, H, W]``,
    the same size). Returns ``[B, C, H, W]``."""
    b, c, h, w = features.shape
    if reference.shape[1:] != features.shape[1:]:
        raise ValueError(f"reference {list(reference.shape)} and features {list(features.shape)} "
                         "must have the same channels and size")
    ph, pw = (-h) % k, (-w) % k
    if ph or pw:
        features = F.pad(features, (0, pw, 0, ph), mode="replicate")
        reference = F.pad(reference, (0, pw, 0, ph), mode="replicate")
    p = _patches(features, k)  # [B, D, N]
    ref = _patches(reference, k)[0]  # [D, N_ref]
    sim = F.normalize(p, dim=1).transpose(1, 2) @ F.normalize(ref, dim=0)  # [B, N, N_ref]
    weights = torch.softmax(scale * sim, dim=-1)
    repaired = ref @ weights.transpose(1, 2)  # [B, D, N]
    out = _unpatches(repaired, k, h + ph, w + pw)
    return out[..., :h, :w]


class FeatureFusion(nn.Module):
    """FFM, eq. 6-8, for ``branches`` maps of ``channels`` channels: ``forward([F_1, ...]) ->
    sum_i softmax_i(A_i) * F_i``, each ``[B, C, H, W]``."""

    def __init__(self, channels: int, branches: int = 3, kernel: int = 5, mid: int = 64):
        super().__init__()
        pad = kernel // 2
        self.squeeze = nn.Sequential(nn.Conv2d(channels, mid, kernel, padding=pad, bias=False),
                                     nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.attend = nn.ModuleList(nn.Conv2d(mid, channels, kernel, padding=pad)
                                    for _ in range(branches))

    def forward(self, branches: Sequence[torch.Tensor]) -> torch.Tensor:
        z = self.squeeze(torch.stack(list(branches)).sum(0))  # eq. 6, then the m x m compression
        logits = torch.stack([a(z) for a in self.attend])  # [n, B, C, H, W]
        weights = torch.softmax(logits, dim=0)  # eq. 7: over the branches, per channel and position
        return (weights * torch.stack(list(branches))).sum(0)  # eq. 8


class ReferenceAttention(nn.Module):
    """RBAM of one encoder stage: an RBFRM per patch size, then the FFM over the repaired maps
    and the input (``[F_rep_K1, F_rep_K2, ..., F_ad]``)."""

    def __init__(self, channels: int, patch_sizes: Sequence[int] = (2, 4), scale: float = 1.0,
                 kernel: int = 5, mid: int = 64):
        super().__init__()
        self.patch_sizes = tuple(int(k) for k in patch_sizes)
        self.scale = float(scale)
        self.fusion = FeatureFusion(channels, len(self.patch_sizes) + 1, kernel, mid)

    def forward(self, features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        repaired = [reference_repair(features, reference, k, self.scale) for k in self.patch_sizes]
        return self.fusion(repaired + [features])
