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

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from kit.backbones import FeatureExtractor
from kit.data import ImageSet
from kit.maps import concat_layers, selected_positions_first, upsample_blur
from kit.method import AnomalyMethod, FitContext, MethodConfig, Prediction, register
from kit.papers.padim import PAPER


@dataclass
class PadimConfig(MethodConfig):
    layers: tuple[int, ...] = (1, 2, 3)  # backbone stages (paper: ResNet layer1-3; here Lite0 strides 4/8/16)
    n_features: int = 100  # random channel subset d (paper: 100 of 448 for ResNet18, 550 of 1792 for WRN50)
    eps: float = 0.01  # covariance regulariser eps * I (paper: 0.01)
    blur_sigma: float = 4.0  # Gaussian blur of the upsampled map in pixels (paper: 4)
    fit_batch_size: int = 16  # images per feature-extraction batch while fitting

    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Why each budget has these values: PAPER.budget_notes (kit/papers/padim.py).
        "quick": {},
        "full": {},
    }
    LIMITS: ClassVar[dict[str, tuple[Any, Any]]] = {
        "n_features": (1, 100_000), "eps": (1e-12, 1e6), "blur_sigma": (0.0, 100.0),
        "fit_batch_size": (1, 4096),
    }


# -- the stored Gaussians -------------------------------------------------------------------
# A checkpoint holds, per position, the lower Cholesky factor L of the precision
# (Sigma^-1 = L L^T, so M(x)^2 = ||(x - mu)^T L||^2), compactly: the rows of L scaled by the
# channel's standard deviation (which evens out their magnitudes), each column of that then
# quantised to int8 with its own scale, the lower triangle only, entry-major (one entry of
# every position side by side: neighbouring Gaussians are alike, so it deflates well) and
# zlib-deflated. On MTD (4096 positions, d=100) that is ~17 MB instead of 164 MB of float32
# precisions, and the metrics move by ~1e-5. Predict uses the factor expanded from exactly
# these bytes, so a fitted model and its reloaded checkpoint give the same scores.
FACTOR_KEYS = ("factor_int8_zlib", "factor_col_scale", "factor_row_scale")
_LEVELS = 127  # int8: -127..127
_COLUMN_BLOCKS = 4  # predict multiplies the triangle in 4 column blocks: 62% of the dense bytes


def pack_factor(chol: torch.Tensor, std: torch.Tensor) -> dict[str, torch.Tensor]:
    """``chol [P, d, d]`` lower Cholesky factors of the precisions and ``std [P, d]`` the
    channels' standard deviations -> the compact tensors of :data:`FACTOR_KEYS` (on the CPU).

    The scales are bfloat16 (float32's range: any eps is safe); their rounding costs no
    accuracy, because the quantisation uses the stored values, which expansion divides by.
    """
    d = chol.shape[-1]
    row = std.to(torch.bfloat16).clamp_min(torch.finfo(torch.bfloat16).tiny)
    scaled = chol.double() * row.double()[:, :, None]
    # round the column scale up so that no value lands beyond +-127
    col = (scaled.abs().amax(dim=1) * ((1 + 2 ** -7) / _LEVELS)).to(torch.bfloat16)
    col = col.clamp_min(torch.finfo(torch.bfloat16).tiny)
    q = scaled.div_(col.double()[:, None, :]).round_().clamp_(-_LEVELS, _LEVELS).to(torch.int8)
    rows, cols = torch.tril_indices(d, d, device=q.device)
    tri = q[:, rows, cols].T.contiguous().cpu()  # [d (d + 1) / 2, P]
    blob = zlib.compress(tri.numpy().tobytes(), 6)
    return {"factor_int8_zlib": torch.frombuffer(bytearray(blob), dtype=torch.uint8),
            "factor_col_scale": col.cpu(), "factor_row_scale": row.cpu()}


def unpack_factor(packed: dict[str, torch.Tensor], positions: int, dims: int) -> torch.Tensor:
    """The float32 lower factors ``[P, d, d]`` of :func:`pack_factor`'s tensors."""
    n_tri = dims * (dims + 1) // 2
    try:
        raw = zlib.decompress(packed["factor_int8_zlib"].cpu().numpy().tobytes())
    except zlib.error as err:
        raise ValueError(f"factor_int8_zlib is not zlib data ({err})") from None
    if len(raw) != n_tri * positions:
        raise ValueError(f"factor_int8_zlib holds {len(raw)} values, expected {n_tri * positions} "
                         f"({positions} positions x {n_tri} triangle entries of d={dims})")
    col, row = packed["factor_col_scale"].float(), packed["factor_row_scale"].float()
    if tuple(col.shape) != (positions, dims) or tuple(row.shape) != (positions, dims):
        raise ValueError(f"factor scales of shape {list(col.shape)} and {list(row.shape)}, "
                         f"expected [{positions}, {dims}]")
    tri = torch.frombuffer(bytearray(raw), dtype=torch.int8).view(n_tri, positions)
    rows, cols = torch.tril_indices(dims, dims)
    factor = torch.zeros(positions, dims, dims)
    factor[:, rows, cols] = tri.T.float()
    return factor.mul_(col[:, None, :]).div_(row[:, :, None])


@register
class Padim(AnomalyMethod):
    name = "padim"
    config_cls = PadimConfig
    paper = PAPER  # title, citation, budget notes
    feature_spaces = ("source",)

    def __init__(self, config: PadimConfig):
        super().__init__(config)
        # channels-last, as every other method: padim scores faster with it too (the layout
        # column of benchmarks/bench_methods.py --techniques)
        self.extractor = FeatureExtractor(config.backbone, config.layers, config.weights,
                                          channels_last=True).to(self.device)
        total = sum(self.extractor.channels)
        d = min(config.n_features, total)
        gen = torch.Generator().manual_seed(config.seed)
        self.channel_idx = torch.randperm(total, generator=gen)[:d].sort().values
        self.mean: torch.Tensor | None = None  # [P, d] per-position means
        # Sigma^-1 = L L^T per position, L lower triangular, kept as column blocks for predict:
        # block k = L[:, c_k:, c_k:c_{k+1}] ([P, d - c_k, w_k]; rows above c_k are zeros)
        self.factor_blocks: list[torch.Tensor] = []
        self.block_starts: list[int] = []
        self.packed: dict[str, torch.Tensor] | None = None  # the checkpoint's compact factor
        self.grid: tuple[int, int] | None = None

    def _use_factor(self, factor: torch.Tensor) -> None:
        """Keep ``factor [P, d, d]`` (lower) as the column blocks predict multiplies with."""
        d = factor.shape[-1]
        k = max(1, min(_COLUMN_BLOCKS, d))
        bounds = [round(i * d / k) for i in range(k + 1)]
        self.block_starts = bounds[:-1]
        self.factor_blocks = [factor[:, a:, a:b].contiguous() for a, b in zip(bounds, bounds[1:])]

    def _dense_factor(self) -> torch.Tensor:
        """The lower factors ``[P, d, d]`` back from the column blocks."""
        p, rows, _ = self.factor_blocks[0].shape
        out = torch.zeros(p, rows, rows, dtype=self.factor_blocks[0].dtype,
                          device=self.factor_blocks[0].device)
        for a, block in zip(self.block_starts, self.factor_blocks):
            out[:, a:, a:a + block.shape[-1]] = block
        return out

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> the selected features, positions first: ``[P, B, d]`` with
        ``P = H_1 * W_1`` (the layout of the batched matmuls). Fit and predict both use it, so
        the Gaussians are fitted on exactly the features they score."""
        maps = self.extractor(images.to(self.device))
        self.grid = tuple(maps[0].shape[-2:])
        return selected_positions_first(maps, self.channel_idx)

    @torch.inference_mode()
    def fit(self, train: ImageSet, context: FitContext | None = None) -> dict[str, Any]:
        progress = self.fit_context(context).progress
        n, total, outer = 0, None, None
        batches = train.batches(self.config.fit_batch_size)
        n_batches = -(-len(train) // self.config.fit_batch_size)
        for batch in tqdm(batches, total=n_batches, desc="padim: fitting Gaussians", disable=not progress, leave=False):
            x = self._features(batch).double()  # [P, B, d]; float64 sums: small variances
            if total is None:
                total = torch.zeros(x.shape[0], x.shape[2], dtype=torch.float64, device=x.device)
                outer = torch.zeros(x.shape[0], x.shape[2], x.shape[2], dtype=torch.float64,
                                    device=x.device)
            total += x.sum(1)
            outer.baddbmm_(x.transpose(1, 2), x)  # sum over images of x x^T, per position
            n += x.shape[1]
        if n < 2:
            raise ValueError("PaDiM needs at least 2 training images")
        mean = total / n
        cov = (outer - n * torch.einsum("pi,pj->pij", mean, mean)) / (n - 1)
        del outer
        cov += self.config.eps * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        std = cov.diagonal(dim1=-2, dim2=-1).sqrt()
        chol = torch.linalg.cholesky(torch.linalg.inv(cov))  # Sigma^-1 = L L^T, float64
        del cov
        self.packed = pack_factor(chol, std)
        del chol
        # predict with exactly what the checkpoint will hold (fit and reload score alike)
        self._use_factor(unpack_factor(self.packed, *mean.shape).to(mean.device))
        self.mean = mean.float()
        return {"n_images": n, "positions": int(mean.shape[0]), "dims": int(mean.shape[1])}

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> Prediction:
        if self.mean is None:
            raise RuntimeError("fit() or load_state_dict() first")
        feats = self._features(images)  # [P, B, d]
        diff = feats - self.mean[:, None]  # [P, B, d]
        # M^2 = ||(x - mu)^T L||^2 as one batched matmul per column block of the triangle:
        # positions are the batch, so each factor is read once per batch of images (reading
        # them is the cost: ~100 MB on MTD), and only the triangle's non-zero blocks are read
        sq = None
        for start, block in zip(self.block_starts, self.factor_blocks):
            part = torch.bmm(diff[:, :, start:], block).square_().sum(-1)  # [P, B]
            sq = part if sq is None else sq.add_(part)
        maps = sq.T.sqrt().reshape(-1, *self.grid)
        # upsampling and blur as two small matrix products (same map to float rounding)
        maps = upsample_blur(maps, images.shape[-1], self.config.blur_sigma)
        return Prediction(image_scores=maps.flatten(1).max(1).values, anomaly_maps=maps)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Source space: the backbone features, averaged over positions: ``[B, sum C]``."""
        feats = concat_layers(self.extractor(images.to(self.device)))
        return {"source": feats.mean(dim=(2, 3))}

    def state_dict(self) -> dict[str, Any]:
        packed = self.packed
        if packed is None and self.factor_blocks:  # loaded from a checkpoint with precisions
            factor = self._dense_factor().double()
            cov = torch.linalg.inv(factor @ factor.transpose(1, 2))
            packed = pack_factor(factor, cov.diagonal(dim1=-2, dim2=-1).sqrt())
        return {"mean": self.mean, **(packed or dict.fromkeys(FACTOR_KEYS)),
                "channel_idx": self.channel_idx, "grid": list(self.grid) if self.grid else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mean = state["mean"]
        device = getattr(self, "device", torch.device("cpu"))
        if mean is None:
            factor, self.packed = None, None
        elif "precision" in state and "factor_int8_zlib" not in state:
            # checkpoints written before the compact factor held float32 precisions [P, d, d]:
            # their exact factor, so such a run re-scores as it scored
            try:
                factor = torch.linalg.cholesky(state["precision"].double()).float()
            except RuntimeError as err:  # torch.linalg.LinAlgError
                raise ValueError("an old PaDiM checkpoint (precision matrices) whose precisions "
                                 f"are not positive definite ({str(err).splitlines()[0][:120]}); "
                                 "fit the run again") from None
            self.packed = None
        else:
            missing = [k for k in FACTOR_KEYS if k not in state]
            if missing:
                raise KeyError(f"PaDiM state without {', '.join(missing)} (nor the old "
                               "'precision'): not a PaDiM checkpoint")
            self.packed = {k: state[k] for k in FACTOR_KEYS}
            factor = unpack_factor(self.packed, *mean.shape)
        self.mean = None if mean is None else mean.float().to(device)
        if factor is None:
            self.factor_blocks, self.block_starts = [], []
        else:
            self._use_factor(factor.to(device))
        self.channel_idx = state["channel_idx"]
        self.grid = tuple(state["grid"]) if state["grid"] else None
