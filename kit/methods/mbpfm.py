"""MB-PFM (Wan et al., TII 2022): B-PFM on several stages, one mapping per stage.

Each stage pair ``(y_k, z_k)`` gets its own bidirectional 1x1 mapping (``kit/methods/bpfm.py``);
each stage's map is the mean of its two squared-residual maps, upsampled to the image, and the
stages' maps are averaged, as the public PFM code does:

    map = 1/K sum_k upsample(1/2 (||z_k - z_k^MT||^2 + ||y_k - y_k^MS||^2))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from kit.method import register
from kit.methods.bpfm import BPfm, BPfmConfig
from kit.papers.mbpfm import PAPER


@dataclass
class MBPfmConfig(BPfmConfig):
    layers: tuple[int, ...] = (2, 3, 4)  # source stages (code: ResNet layer1-3; here strides 8/16/32, the deepest B-PFM's)
    target_layers: tuple[int, ...] = (2, 3, 4)  # target stages at the same strides

    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Why each budget has these values: PAPER.budget_notes (kit/papers/mbpfm.py).
        "quick": dict(image_size=256, map_epochs=20, max_train_images=240),
        "full": dict(image_size=384, map_epochs=60),
    }


@register
class MBPfm(BPfm):
    name = "mbpfm"
    config_cls = MBPfmConfig
    paper = PAPER
