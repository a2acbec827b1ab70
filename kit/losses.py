"""Losses shared by the trained methods: focal loss, a perceptual loss on a frozen CNN's
features, and NDP-Net's pixel-level defect perception loss (eq. 2). Shapes in each docstring."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               alpha: float | None = None) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), mean over pixels: ``logits, target [B, H, W]``,
    target in [0, 1]. ``(1 - p_t)^gamma`` weights the cross-entropy down where the prediction is
    already right, so the few defect pixels are not drowned by the many normal ones. ``alpha``
    weighs positives by alpha and negatives by 1 - alpha (None: no class weight, as DRAEM)."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()


def perceptual_l1(features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """``1/L sum_l mean |D_l(a) - D_l(b)|`` over the ``L`` feature maps ``[B, C_l, H_l, W_l]`` of
    two images under the same frozen network (Johnson et al.; NDP-Net eq. 13 and 16)."""
    return torch.stack([F.l1_loss(fa, fb) for fa, fb in zip(features_a, features_b)]).mean()


def feature_difference(features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
    """``M(||Phi(a) - Phi(b)||^2)``: the channel mean of the squared difference, ``[B, C, H, W]``
    pairs -> ``[B, H, W]``."""
    return (features_a - features_b).pow(2).mean(1)


def minmax_per_image(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``[B, H, W]`` scaled to [0, 1] per image (the N(.) of NDP-Net's eq. 2, which the paper
    leaves unspecified)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return (maps - lo[:, None, None]) / (hi - lo + eps)[:, None, None]


def defect_perception_loss(clean: Sequence[torch.Tensor], defective: Sequence[torch.Tensor],
                           mask: torch.Tensor) -> torch.Tensor:
    """NDP-Net's eq. 2: for each encoder layer ``l``, the normalised channel-mean squared
    difference between the features of the clean image and of its synthetic-defect copy should
    be the defect mask resized to that layer:

        L = 1/L sum_l mean (N(M(||Phi_l(I_o) - Phi_l(I_ad)||^2)) - I_m^l)^2

    ``clean``, ``defective``: the ``L`` maps ``[B, C_l, H_l, W_l]``; ``mask [B, S, S]`` in {0, 1}.
    Images whose mask is empty are left out (their difference is noise scaled up to [0, 1]);
    a batch with no defect at all gives 0.
    """
    has = mask.flatten(1).amax(1) > 0
    if not bool(has.any()):
        return mask.new_zeros(())
    losses = []
    for fc, fd in zip(clean, defective):
        diff = minmax_per_image(feature_difference(fc[has], fd[has]))
        target = F.interpolate(mask[has, None].float(), size=diff.shape[-2:], mode="bilinear",
                               align_corners=False)[:, 0]
        losses.append(F.mse_loss(diff, target))
    return torch.stack(losses).mean()
