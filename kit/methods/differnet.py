"""DifferNet (Rudolph, Wandt, Rosenhahn, WACV 2021): a normalizing flow on pooled CNN features.

Idea: a frozen pretrained CNN looks at an image at several scales; each feature map is pooled
to one vector per scale (global average pooling in the paper) and the vectors are
concatenated into ``y`` (paper: AlexNet at 448/224/112 px -> 3 x 256 = 768 numbers).
A Real-NVP flow ``z = f(y)`` (``kit.flows``: 8 coupling blocks, eq. 1, soft clamp eq. 2,
fixed seeded permutations, FC subnets) is trained by maximum likelihood on defect-free images
under random transforms (rotations; brightness/contrast for grayscale MTD):

    L(y) = ||z||^2 / 2 - log |det dz/dy|                                         (eq. 4)

Score of an image (eq. 5): the mean of L over a set of test transforms T_i. Here the set is
FIXED and seeded (angles 2 pi k / n, colour factors from a seeded generator, T_0 = identity),
so a model gives the same scores every time. ``score="z2"`` is the public code's variant
(mean of z^2 over transforms and dimensions, no log-det).

Localisation (sec. 3.3, eq. 7): back-propagate L to the input image through the rotation,
blur the gradient with a Gaussian (sigma 3), take |.| and sum over channels:
``g_x = sum_c |G * grad_{x_c} L|``; averaged over ``n_map_transforms`` rotations. Because the
gradient is taken w.r.t. the *unrotated* image through a differentiable rotation, every map is
already rotated back.

Frozen backbone => features per (image, transform) are computed once and kept in an on-disk
cache (``kit.cache``). Training draws a fixed, seeded pool of ``n_train_transforms``
transforms per image (the public code draws fresh ones every epoch) and cycles over it.

Our changes for the CPU and for honesty are config switches (``standardize``, ``pooling``,
``layers``, ``scales``); the paper's values are in the comments, and ``BUDGETS`` holds the
settings chosen on training data only (see notebooks/01_differnet.ipynb, "what mattered").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kit.backbones import FeatureExtractor
from kit.cache import FeatureCache, file_key, params_key, tensor_key
from kit.data import ImageSet
from kit.flows import Flow, check_finite_loss, nll, subnet_fc
from kit.maps import gaussian_blur
from kit.method import AnomalyMethod, FitContext, MethodConfig, Prediction, register
from kit.papers.differnet import PAPER

POOLINGS = ("mean", "max", "std")  # statistics a pooling string may combine, e.g. "mean+std"
ROTATIONS = ("uniform", "right", "none")


@dataclass
class DifferNetConfig(MethodConfig):
    # -- features (frozen backbone) --
    image_size: int = 448  # S: the largest scale (paper: 448)
    scales: tuple[int, ...] = (448, 224, 112)  # input sizes fed to the backbone (paper: 448/224/112); "single" = (S,), "multi" = (S, S/2, S/4)
    layers: tuple[int, ...] = (4,)  # backbone stages pooled (paper: AlexNet .features output, 256 ch; Lite0 stage 4: 320 ch)
    pooling: str = "mean"  # per-channel statistics, "+"-joined from mean/max/std (paper: global average pooling)
    standardize: bool = False  # ours: z-score features with training statistics before the flow (paper: no)
    # -- flow --
    n_blocks: int = 8  # coupling blocks (paper: 8)
    hidden: int = 2048  # subnet width (paper: 3 hidden FC layers of 2048)
    subnet_depth: int = 3  # hidden layers per subnet (paper: 3)
    clamp: float = 3.0  # soft-clamp alpha, eq. 2 (paper: 3)
    # -- training --
    lr: float = 2e-4  # Adam learning rate (paper: 2e-4)
    betas: tuple[float, float] = (0.8, 0.8)  # Adam betas (paper: "author-suggested"; public code: 0.8, 0.8)
    adam_eps: float = 1e-4  # Adam eps (public code: 1e-4)
    weight_decay: float = 1e-5  # (public code: 1e-5)
    train_batch_size: int = 96  # (paper: 96; public code: 24)
    epochs: int = 192  # passes over the (image, transform) pool (paper: 192; code: 24 meta x 8 sub-epochs)
    # -- transforms --
    train_transforms: bool = True  # random transforms in training (Table 3: off in A and C)
    n_train_transforms: int = 4  # fixed seeded pool per image (public code: 4 fresh ones per image per epoch)
    n_test_transforms: int = 64  # transforms averaged in the score, eq. 5 (code: 64; Table 3: 1/4/16/64)
    rotation: str = "uniform"  # "uniform" in [0, 2pi] (paper), "right" (multiples of 90 deg) or "none"
    color_jitter: float = 0.15  # brightness/contrast factors U[1-j, 1+j] (paper, MTD only: 0.15; 0 = off)
    transform_seed: int = 0  # seed of the fixed test transforms (independent of the run seed)
    # -- scoring and maps --
    score: str = "nll"  # "nll": eq. 5 (paper); "z2": mean z^2 (public code)
    n_map_transforms: int = 4  # rotations averaged in the gradient map (sec. 3.3; 0 = no maps)
    map_sigma: float = 3.0  # Gaussian blur of the gradient, eq. 7 (code: 3)
    # -- engineering --
    cache: bool = True  # keep per-(image, transform) features on disk (kit/cache.py)
    extract_batch_size: int = 16  # images per backbone batch while extracting training features
    # scoring: each image is scored under its test transforms, so a batch of 8 images is
    # already a large forward, and more images per call pay off less than for one-pass methods
    # (speed.json's batch column)
    batch_size: int = 8

    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Why each budget has these values: PAPER.budget_notes (kit/papers/differnet.py).
        "quick": dict(image_size=128, scales=(128,), layers=(3, 4), pooling="mean+max",
                      standardize=False, hidden=256, subnet_depth=2, epochs=20, train_batch_size=64,
                      n_train_transforms=4, n_test_transforms=16, n_map_transforms=1),
        "full": dict(image_size=224, scales=(224, 112), layers=(3, 4), pooling="mean+max",
                     standardize=False, hidden=512, subnet_depth=2, epochs=30, train_batch_size=64,
                     n_train_transforms=4, n_test_transforms=8, n_map_transforms=2),
    }

    # only predict reads these (the fit trains on the fixed pool of training transforms)
    SCORING: ClassVar[tuple[str, ...]] = MethodConfig.SCORING + (
        "n_test_transforms", "transform_seed", "score", "n_map_transforms", "map_sigma")

    LIMITS: ClassVar[dict[str, tuple[Any, Any]]] = {
        "scales": (16, 2048), "n_blocks": (1, 64), "hidden": (1, 16384),
        "subnet_depth": (1, 16), "clamp": (1e-3, 100.0), "lr": (1e-8, 1.0), "betas": (0.0, 0.9999),
        "adam_eps": (0.0, 1.0), "weight_decay": (0.0, 1.0), "train_batch_size": (1, 65536),
        "epochs": (1, 100_000), "n_train_transforms": (1, 64), "n_test_transforms": (1, 1024),
        "color_jitter": (0.0, 0.99), "n_map_transforms": (0, 1024), "map_sigma": (0.0, 100.0),
        "extract_batch_size": (1, 4096), "transform_seed": (0, 2**63 - 1),
    }  # n_train_transforms <= POOL_DRAWS, the transforms drawn per image

    def __post_init__(self):
        if self.scales in ("single", ("single",)):  # Table 3 A/B: only the largest scale
            self.scales = (self.image_size,)
        elif self.scales in ("multi", ("multi",)):  # Table 3 C-G: the paper's 448/224/112 ratios
            self.scales = (self.image_size, self.image_size // 2, self.image_size // 4)
        super().__post_init__()  # types and ranges of every field (LIMITS), before any work
        stats = self.pooling.split("+")
        if not stats or any(s not in POOLINGS for s in stats):
            raise ValueError(f"pooling must join {POOLINGS} with '+', got {self.pooling!r}")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"rotation must be one of {ROTATIONS}, got {self.rotation!r}")
        if self.score not in ("nll", "z2"):
            raise ValueError(f"score must be 'nll' or 'z2', got {self.score!r}")


# ------------------------------------------------------------------------------------------------
# transforms: one row (angle in radians, brightness factor, contrast factor) per transform

IDENTITY = (0.0, 1.0, 1.0)
POOL_DRAWS = 64  # training transforms drawn per image; a pool of k uses the first k


def apply_transforms(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Transform ``images [B, 3, S, S]`` by ``params [B, 3]`` (angle, brightness, contrast).

    Brightness multiplies, contrast scales around the image mean (torchvision's definitions),
    clamped to [0, 1]; then a rotation about the centre, bilinear, black outside the image
    (as the public code's torchvision rotation). Differentiable w.r.t. ``images``.
    """
    params = params.to(images.dtype)
    b = params[:, 1].view(-1, 1, 1, 1)
    c = params[:, 2].view(-1, 1, 1, 1)
    x = images
    if not torch.all((params[:, 1] == 1) & (params[:, 2] == 1)):
        x = (x * b).clamp(0, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean).clamp(0, 1)
    angle = params[:, 0]
    if torch.any(angle != 0):
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x


def _draw_angles(n: int, rotation: str, gen: torch.Generator) -> torch.Tensor:
    if rotation == "uniform":
        return torch.rand(n, generator=gen, dtype=torch.float64) * 2 * math.pi
    if rotation == "right":
        return torch.randint(0, 4, (n,), generator=gen).double() * (math.pi / 2)
    return torch.zeros(n, dtype=torch.float64)


def _draw_colour(n: int, jitter: float, gen: torch.Generator) -> torch.Tensor:
    if jitter <= 0:
        return torch.ones(n, 2, dtype=torch.float64)
    return 1 - jitter + 2 * jitter * torch.rand(n, 2, generator=gen, dtype=torch.float64)


def train_transform_pool(n_images: int, config: DifferNetConfig, gen: torch.Generator) -> torch.Tensor:
    """The fixed pool of training transforms: ``[N, K, 3]`` (K = 1 identity when transforms are off)."""
    if not config.train_transforms:
        return torch.tensor(IDENTITY, dtype=torch.float64).expand(n_images, 1, 3).clone()
    k = config.n_train_transforms
    # Draw a table of POOL_DRAWS per image and keep the first k: a pool of 2 is the start of a pool
    # of 8 for the same seed, so budgets and ablation variants share cached features.
    width = max(k, POOL_DRAWS)
    angles = _draw_angles(n_images * width, config.rotation, gen).view(n_images, width)
    colour = _draw_colour(n_images * width, config.color_jitter, gen).view(n_images, width, 2)
    return torch.cat([angles[..., None], colour], 2)[:, :k].contiguous()


def fixed_test_transforms(config: DifferNetConfig, n: int | None = None) -> torch.Tensor:
    """The fixed test transforms ``[n, 3]``: angles ``2 pi k / n`` (``"right"``: ``(k mod 4) pi/2``),
    seeded colour factors, and row 0 the identity, so ``n = 1`` scores the original image only."""
    n = config.n_test_transforms if n is None else n
    k = torch.arange(n, dtype=torch.float64)
    if config.rotation == "uniform":
        angles = 2 * math.pi * k / n
    elif config.rotation == "right":
        angles = (k % 4) * (math.pi / 2)
    else:
        angles = torch.zeros(n, dtype=torch.float64)
    gen = torch.Generator().manual_seed(config.transform_seed + 7919)
    colour = _draw_colour(n, config.color_jitter, gen)
    params = torch.cat([angles[:, None], colour], 1)
    params[0] = torch.tensor(IDENTITY, dtype=torch.float64)
    return params


def map_transform_indices(n_test: int, n_map: int) -> list[int]:
    """Which test transforms also give a gradient map: ``n_map`` of them, evenly spread."""
    n_map = min(n_map, n_test)
    return sorted({int(round(j * n_test / n_map)) % n_test for j in range(n_map)}) if n_map > 0 else []


# ------------------------------------------------------------------------------------------------


@register
class DifferNet(AnomalyMethod):
    name = "differnet"
    config_cls = DifferNetConfig
    paper = PAPER  # title, paper values, Table 3 / Fig. 7 ablations, budget notes
    feature_spaces = ("source", "flow")

    def __init__(self, config: DifferNetConfig):
        super().__init__(config)
        with torch.random.fork_rng(devices=[]):  # untrained ("none") weights depend on the seed only
            torch.manual_seed(config.seed)
            self.extractor = FeatureExtractor(config.backbone, config.layers, config.weights,
                                              channels_last=True).to(self.device)
        self.stats = config.pooling.split("+")
        spec = {"backbone": config.backbone, "weights": self.extractor.weights,
                "layers": list(config.layers), "scales": list(config.scales),
                "pooling": config.pooling, "image_size": config.image_size,
                "transform": "brightness-contrast-rotate-bilinear-zeros/v1", "memory_format": "channels_last",
                "numerics": self.extractor.numerics}
        if self.extractor.weights == "none":  # random weights depend on the seed
            spec["seed"] = config.seed
        self.cache = FeatureCache(spec, enabled=config.cache)
        self.dim = len(config.scales) * sum(self.extractor.channels) * len(self.stats)
        self.flow: Flow | None = None
        self.feat_mean = torch.zeros(self.dim, device=self.device)
        self.feat_std = torch.ones(self.dim, device=self.device)
        self.backbone_calls = 0  # images x transforms that went through the backbone

    # -- features --------------------------------------------------------------------------------
    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """Multi-scale pooled features ``[B, D]`` of already transformed ``images [B, 3, S, S]``.

        Differentiable w.r.t. ``images`` (the gradient maps need it).
        """
        self.backbone_calls += images.shape[0]
        images = images.to(self.device)
        parts = []
        for scale in self.config.scales:
            x = images if scale == images.shape[-1] else F.interpolate(
                images, size=(scale, scale), mode="bilinear", align_corners=False, antialias=True)
            for fmap in self.extractor(x):
                flat = fmap.flatten(2)  # [B, C, HW]
                for stat in self.stats:
                    if stat == "mean":
                        parts.append(flat.mean(2))
                    elif stat == "max":
                        parts.append(flat.amax(2))
                    else:
                        parts.append(flat.std(2) if flat.shape[2] > 1 else torch.zeros_like(flat[..., 0]))
        return torch.cat(parts, 1)

    def _normalise(self, feats: torch.Tensor) -> torch.Tensor:
        """Features on the method's device, standardised when ``standardize`` is on."""
        return (feats.to(self.device) - self.feat_mean) / self.feat_std

    def cached_features(self, images: torch.Tensor, params: torch.Tensor,
                        keys: list[str] | None = None) -> torch.Tensor:
        """Features ``[B, T, D]`` of every image under every transform in ``params [T, 3]``
        (or per image: ``[B, T, 3]``), read from the cache where possible. ``keys``: one image key
        per image (default: content hashes)."""
        b = images.shape[0]
        params = params.expand(b, -1, -1) if params.dim() == 2 else params
        keys = keys or [tensor_key(img) for img in images]
        out = torch.empty(b, params.shape[1], self.dim)
        todo = []
        for i in range(b):
            for t in range(params.shape[1]):
                hit = self.cache.get(keys[i], params_key(params[i, t].tolist()))
                if hit is None:
                    todo.append((i, t))
                else:
                    out[i, t] = torch.from_numpy(hit)
        step = max(1, self.config.extract_batch_size)
        with torch.no_grad():
            for start in range(0, len(todo), step):
                chunk = todo[start:start + step]
                idx = torch.tensor([i for i, _ in chunk])
                p = torch.stack([params[i, t] for i, t in chunk])
                feats = self.pooled_features(apply_transforms(images[idx].to(self.device),
                                                              p.to(self.device))).cpu()
                for (i, t), f in zip(chunk, feats):
                    out[i, t] = f
                    self.cache.put(keys[i], params_key(params[i, t].tolist()), f)
        return out

    def _training_features(self, train: ImageSet, params: torch.Tensor, progress: bool) -> torch.Tensor:
        """``[N, K, D]`` for the training pool; images are read only when something is missing."""
        keys = [file_key(s.path, train.image_size) for s in train.samples]
        out = torch.empty(len(train), params.shape[1], self.dim)
        step = max(1, self.config.extract_batch_size)
        bar = tqdm(range(0, len(train), step), desc="differnet: features", disable=not progress, leave=False)
        for start in bar:
            stop = min(start + step, len(train))
            missing = [i for i in range(start, stop) for t in range(params.shape[1])
                       if not self.cache.path(keys[i], params_key(params[i, t].tolist())).is_file()
                       or not self.config.cache]
            if missing:
                images = torch.stack([train[i] for i in range(start, stop)])
            else:  # everything is cached: skip decoding the images
                images = torch.zeros(stop - start, 3, 1, 1)
            out[start:stop] = self.cached_features(images, params[start:stop], keys[start:stop])
        return out

    # -- fit -------------------------------------------------------------------------------------
    def build_flow(self) -> Flow:
        c = self.config
        return Flow.build(self.dim, c.n_blocks, subnet_fc(c.hidden, c.subnet_depth), clamp=c.clamp,
                          clamp_kind="atan", seed=c.seed).to(self.device)

    def fit(self, train: ImageSet, context: FitContext | None = None) -> dict[str, Any]:
        c = self.config
        context = self.fit_context(context)
        progress = context.progress
        gen = torch.Generator().manual_seed(c.seed)
        params = train_transform_pool(len(train), c, gen)
        t0 = time.perf_counter()
        hits0, miss0 = self.cache.hits, self.cache.misses
        feats = self._training_features(train, params, progress).reshape(-1, self.dim)
        extract_seconds = time.perf_counter() - t0
        if c.standardize:
            self.feat_mean = feats.mean(0).to(self.device)
            self.feat_std = (feats.std(0).clamp_min(1e-6) if len(feats) > 1
                             else torch.ones(self.dim)).to(self.device)
        data = self._normalise(feats)
        self.flow = self.build_flow()
        log = self.train_flow(data, gen, progress, on_epoch=lambda epoch, _, loss: context.epoch_done(
            epoch + 1, c.epochs, nll_per_dim=loss))
        return {**log, "n_images": len(train), "transforms_per_image": int(params.shape[1]),
                "dim": self.dim, "extract_seconds": round(extract_seconds, 3),
                "cache_hits": self.cache.hits - hits0, "cache_misses": self.cache.misses - miss0}

    def train_flow(self, data: torch.Tensor, gen: torch.Generator, progress: bool = True,
                   epochs: int | None = None, on_epoch=None) -> dict[str, Any]:
        """Maximum likelihood on ``data [M, D]`` (already standardised): ``mean(L) / D`` per batch.

        ``on_epoch(epoch, self, loss)`` after each epoch (0-based), with its mean loss."""
        c = self.config
        epochs = c.epochs if epochs is None else epochs
        opt = torch.optim.Adam(self.flow.parameters(), lr=c.lr, betas=c.betas, eps=c.adam_eps,
                               weight_decay=c.weight_decay)
        self.flow.train()
        losses = []
        t0 = time.perf_counter()
        for epoch in tqdm(range(epochs), desc="differnet: training", disable=not progress, leave=False):
            order = torch.randperm(len(data), generator=gen)
            total, count = 0.0, 0
            for idx in order.split(c.train_batch_size):
                z, logdet = self.flow(data[idx])
                loss = nll(z, logdet).mean() / self.dim
                check_finite_loss(loss, epoch, c.lr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().item() * len(idx)
                count += len(idx)
            losses.append(round(total / count, 6))
            if on_epoch is not None:
                on_epoch(epoch, self, losses[-1])
        self.flow.eval()
        return {"loss": losses, "epochs": epochs, "train_seconds": round(time.perf_counter() - t0, 3)}

    # -- predict ---------------------------------------------------------------------------------
    def _scores_from(self, z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
        """Per-(image, transform) score: NLL (eq. 4) or the code's mean z^2."""
        if self.config.score == "z2":
            return z.pow(2).mean(1)
        return nll(z, logdet)

    def _input_gradient(self, images: torch.Tensor, params: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(dL/dx [B, 3, S, S], z [B, D], log-det [B])`` of ``images [B, 3, S, S]`` under one
        transform ``params [3]``; ``z`` and log-det detached.

        Gradients are on here whatever the caller chose: under ``torch.no_grad()`` or
        ``torch.inference_mode()`` around ``predict`` (the dashboard had one) the map would have
        nothing to back-propagate through.
        """
        with torch.inference_mode(False), torch.enable_grad():
            # copies: tensors made in inference mode cannot join autograd, copies made here can
            x = images.detach().to(self.device).clone().requires_grad_(True)
            p = params.to(self.device).clone().expand(images.shape[0], 3)
            feats = self.pooled_features(apply_transforms(x, p))
            z, logdet = self.flow(self._normalise(feats))
            loss = nll(z, logdet)  # the map always uses L of eq. 4 (sec. 3.3) ...
            # ... per dimension, as in training: same map up to a constant, and values stay
            # well inside float16 (runs store maps as float16; raw L gradients overflow it)
            (grad,) = torch.autograd.grad(loss.sum() / self.dim, x)  # rotation already undone
        return grad, z.detach(), logdet.detach()

    def predict(self, images: torch.Tensor) -> Prediction:
        if self.flow is None:
            raise RuntimeError("fit() or load_state_dict() first")
        c = self.config
        b, s = images.shape[0], images.shape[-1]
        params = fixed_test_transforms(c)
        map_idx = map_transform_indices(len(params), c.n_map_transforms)
        per_t = torch.empty(b, len(params))
        rest = [t for t in range(len(params)) if t not in map_idx]
        if rest:
            feats = self.cached_features(images, params[rest])  # [B, T', D]
            with torch.no_grad():
                z, logdet = self.flow(self._normalise(feats.reshape(-1, self.dim)))
                per_t[:, rest] = self._scores_from(z, logdet).view(b, len(rest)).cpu()
        maps = torch.zeros(b, s, s, device=self.device)
        for t in map_idx:
            grad, z, logdet = self._input_gradient(images, params[t])
            maps += gaussian_blur(grad, c.map_sigma).abs().sum(1)  # eq. 7
            per_t[:, t] = self._scores_from(z, logdet).cpu()
        if map_idx:
            maps /= len(map_idx)
        scores = per_t.mean(1)  # eq. 5
        return Prediction(image_scores=scores, anomaly_maps=maps)

    def inference_info(self) -> dict[str, Any]:
        """Counters behind a timing: views served by the feature cache vs sent through the backbone
        (``infer_ms_per_image`` of a run whose test views were cached is not a backbone timing)."""
        return {"feature_cache_hits": self.cache.hits, "feature_cache_misses": self.cache.misses,
                "backbone_views": self.backbone_calls}

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``source``: pooled multi-scale features of the untransformed image ``[B, D]``;
        ``flow``: their latent ``z [B, D]``."""
        feats = self.cached_features(images, torch.tensor([IDENTITY], dtype=torch.float64))[:, 0]
        out = {"source": feats}
        if self.flow is not None:
            out["flow"] = self.flow(self._normalise(feats))[0]
        return out

    # -- checkpoint ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"flow": self.flow.state_dict() if self.flow is not None else None,
                "feat_mean": self.feat_mean, "feat_std": self.feat_std, "dim": self.dim}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["dim"]) != self.dim:
            raise ValueError(f"checkpoint has feature size {state['dim']}, this config gives {self.dim}")
        self.feat_mean = state["feat_mean"].to(self.device)
        self.feat_std = state["feat_std"].to(self.device)
        self.flow = None
        if state["flow"] is not None:
            self.flow = self.build_flow()
            self.flow.load_state_dict(state["flow"])
            self.flow.eval()
