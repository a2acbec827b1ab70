"""PaDiM (Defard et al., ICPR Workshops 2021): a Gaussian per feature position.

Idea: every position ``(i, j)`` of a CNN feature map of a defect-free image is a sample of a
multivariate Gaussian ``N(mu_ij, Sigma_ij)``. At test time the Mahalanobis distance of the
test feature to that Gaussian is the anomaly score of the position:

    M(x_ij) = sqrt((x_ij - mu_ij)^T Sigma_ij^{-1} (x_ij - mu_ij))

Features are layers 1-3 of the backbone, upsampled to layer 1's grid and concatenated; a
seeded random subset of ``n_features`` channels keeps the covariances small (the paper shows
random selection works as well as PCA). Sigma gets ``+ eps * I`` so it is invertible.
The map is upsampled to the image, blurred (sigma 4) and its maximum is the image score.

This is the kit's honest baseline: no training loop, one pass over the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from kit.backbones import FeatureExtractor
from kit.data import ImageSet
from kit.maps import concat_layers, gaussian_blur, upsample
from kit.method import AnomalyMethod, MethodConfig, Prediction, register


@dataclass
class PadimConfig(MethodConfig):
    layers: tuple[int, ...] = (1, 2, 3)  # backbone stages (paper: ResNet layer1-3; here Lite0 strides 4/8/16)
    n_features: int = 100  # random channel subset d (paper: 100 of 448 for ResNet18, 550 of 1792 for WRN50)
    eps: float = 0.01  # covariance regulariser eps * I (paper: 0.01)
    blur_sigma: float = 4.0  # Gaussian blur of the upsampled map in pixels (paper: 4)
    fit_batch_size: int = 16  # images per feature-extraction batch while fitting

    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {},  # one pass either way: the quick budget differs only in the data you give it
        "full": {},
    }
    LIMITS: ClassVar[dict[str, tuple[Any, Any]]] = {
        "n_features": (1, 100_000), "eps": (1e-12, 1e6), "blur_sigma": (0.0, 100.0),
        "fit_batch_size": (1, 4096),
    }


@register
class Padim(AnomalyMethod):
    name = "padim"
    config_cls = PadimConfig
    title = "PaDiM (Defard et al., 2021)"
    feature_spaces = ("source",)
    paper_results: ClassVar[dict[str, dict[str, float]]] = {}

    def __init__(self, config: PadimConfig):
        super().__init__(config)
        self.extractor = FeatureExtractor(config.backbone, config.layers, config.weights)
        total = sum(self.extractor.channels)
        d = min(config.n_features, total)
        gen = torch.Generator().manual_seed(config.seed)
        self.channel_idx = torch.randperm(total, generator=gen)[:d].sort().values
        self.mean: torch.Tensor | None = None  # [P, d] per-position means
        self.precision: torch.Tensor | None = None  # [P, d, d] inverse covariances
        self.grid: tuple[int, int] | None = None

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> selected features ``[B, P, d]`` with ``P = H_1 * W_1``."""
        feats = concat_layers(self.extractor(images))
        self.grid = tuple(feats.shape[-2:])
        feats = feats[:, self.channel_idx]
        return feats.flatten(2).transpose(1, 2)

    @torch.inference_mode()
    def fit(self, train: ImageSet, progress: bool = True) -> dict[str, Any]:
        n, total, outer = 0, None, None
        batches = train.batches(self.config.fit_batch_size)
        n_batches = -(-len(train) // self.config.fit_batch_size)
        for batch in tqdm(batches, total=n_batches, desc="padim: fitting Gaussians", disable=not progress, leave=False):
            x = self._features(batch).double()  # float64 sums: many images, small variances
            if total is None:
                total = torch.zeros(x.shape[1:], dtype=torch.float64)
                outer = torch.zeros(x.shape[1], x.shape[2], x.shape[2], dtype=torch.float64)
            total += x.sum(0)
            outer += torch.einsum("bpi,bpj->pij", x, x)
            n += x.shape[0]
        if n < 2:
            raise ValueError("PaDiM needs at least 2 training images")
        mean = total / n
        cov = (outer - n * torch.einsum("pi,pj->pij", mean, mean)) / (n - 1)
        cov += self.config.eps * torch.eye(cov.shape[-1], dtype=cov.dtype)
        self.mean = mean.float()
        self.precision = torch.linalg.inv(cov).float()
        return {"n_images": n, "positions": int(mean.shape[0]), "dims": int(mean.shape[1])}

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> Prediction:
        if self.mean is None:
            raise RuntimeError("fit() or load_state_dict() first")
        diff = self._features(images) - self.mean  # [B, P, d]
        dist = torch.einsum("bpi,pij,bpj->bp", diff, self.precision, diff).clamp_min(0).sqrt()
        maps = dist.view(-1, *self.grid)
        maps = gaussian_blur(upsample(maps, images.shape[-1]), self.config.blur_sigma)
        return Prediction(image_scores=maps.flatten(1).max(1).values, anomaly_maps=maps)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Source space: the backbone features, averaged over positions: ``[B, sum C]``."""
        feats = concat_layers(self.extractor(images))
        return {"source": feats.mean(dim=(2, 3))}

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "precision": self.precision, "channel_idx": self.channel_idx,
                "grid": list(self.grid) if self.grid else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.precision = state["mean"], state["precision"]
        self.channel_idx = state["channel_idx"]
        self.grid = tuple(state["grid"]) if state["grid"] else None
