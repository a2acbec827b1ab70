"""B-PFM (Wan, Gao, Li, Wen, TII 2022): bidirectional mapping between two pretrained CNNs.

Idea: a source CNN and a different target CNN see the same image. On normal images a small
1x1 network (``kit.mapping.PfmMapping``) learns to map each CNN's features at a position onto
the other's; where the two disagree in a way the mapping never saw, there is a defect:

    y = SNN(x)   z = TNN(x)                 each position's vector scaled to unit length
    z^MT = M_T(y)   y^MS = M_S(z)           loss = MSE(z^MT, z) + MSE(y^MS, y)
    map = 1/2 (||z - z^MT||^2 + ||y - y^MS||^2)   upsampled, blurred; image score = max

NF-BMR's baseline, with its backbones: the paper's pair is EfficientNet-b5 / -b3; offline,
Lite2 is the source and Lite0 the target. MB-PFM (``kit/methods/mbpfm.py``) does the same on
several stages, one mapping per stage. NF-BMR (``kit/methods/nf_bmr.py``) replaces the target
CNN by a normalizing flow of the source features.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kit.allocator import release_free_memory
from kit.backbones import FeatureExtractor
from kit.cache import FeatureCache, file_key, params_key
from kit.data import ImageSet
from kit.maps import upsample_blur
from kit.mapping import MAPPINGS, build_mapping, fit_mapping, residual_maps, unit_positions
from kit.method import AnomalyMethod, FitContext, MethodConfig, Prediction, register
from kit.papers.bpfm import PAPER
from kit.rows import gather_rows

NO_TRANSFORM = params_key([])  # the cache's transform key of an untransformed image


@dataclass
class BPfmConfig(MethodConfig):
    # -- the two spaces --
    backbone: str = "tf_efficientnet_lite2"  # source CNN, SNN (NF-BMR's B-PFM: EfficientNet-b5; offline Lite2)
    layers: tuple[int, ...] = (4,)  # source stages, timm feature_info indices (4: stride 32, as b5's block 36 in NF-BMR)
    target_backbone: str = "tf_efficientnet_lite0"  # target CNN, TNN (EfficientNet-b3; offline Lite0)
    target_layers: tuple[int, ...] = (4,)  # target stages, one per source stage, at the same stride
    image_size: int = 768  # NF-BMR: 768 (24 x 24 maps at stride 32); the budgets use less (PAPER.budget_notes)
    # -- the mapping (kit/mapping.py) --
    mapping: str = "pfm"  # "pfm": B-PFM's five 1x1 layers per direction; "bmr": NF-BMR's residual mapping
    latent: int = 256  # hidden width of the mapping (PFM code: its latent coder's width; NF-BMR's BMR: 1024)
    res_blocks: int = 2  # n, residual blocks each side of the shared one (mapping="bmr" only; NF-BMR: 2)
    bottleneck: int = 4  # residual block's inner width = latent / bottleneck (ours; the paper is silent)
    map_lr: float = 3e-4  # Adam (NF-BMR's BMR: 3e-4)
    map_weight_decay: float = 1e-5  # (NF-BMR: 1e-5)
    map_batch_size: int = 8  # images per step (PFM code and NF-BMR: 8)
    map_epochs: int = 200  # (PFM code: 200; NF-BMR: 300)
    # -- scoring --
    blur_sigma: float = 4.0  # Gaussian blur of the upsampled map in pixels (ours, as PaDiM's)
    extract_batch_size: int = 8  # images per backbone batch while extracting training features
    cache: bool = True  # keep training features in the on-disk feature cache (kit/cache.py)

    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Why each budget has these values: PAPER.budget_notes (kit/papers/bpfm.py).
        "quick": dict(image_size=256, map_epochs=20, max_train_images=240),
        "full": dict(image_size=384, map_epochs=60),
    }
    LIMITS: ClassVar[dict[str, tuple[Any, Any]]] = {
        "layers": (-8, 8), "target_layers": (-8, 8), "latent": (1, 65536), "res_blocks": (0, 64),
        "bottleneck": (1, 1024), "map_lr": (1e-8, 1.0), "map_weight_decay": (0.0, 1.0),
        "map_batch_size": (1, 4096), "map_epochs": (0, 100_000), "blur_sigma": (0.0, 100.0),
        "extract_batch_size": (1, 4096),
    }

    def __post_init__(self):
        super().__post_init__()
        if self.mapping not in MAPPINGS:
            raise ValueError(f"mapping={self.mapping!r}: use one of {MAPPINGS}")
        if self.target_layers and len(self.target_layers) != len(self.layers):
            raise ValueError(f"target_layers={self.target_layers} must pair one target stage with "
                             f"each source stage of layers={self.layers}")


@register
class BPfm(AnomalyMethod):
    name = "bpfm"
    config_cls = BPfmConfig
    paper = PAPER
    feature_spaces = ("source", "target")

    def __init__(self, config: BPfmConfig):
        super().__init__(config)
        c = config
        with torch.random.fork_rng(devices=[]):  # untrained ("none") weights depend on the seed only
            torch.manual_seed(c.seed)
            self.source = FeatureExtractor(c.backbone, c.layers, c.weights, channels_last=True).to(self.device)
            self.target = self.build_target()
        self.mappings = self.build_mappings()

    # -- the two spaces ---------------------------------------------------------------------------
    def build_target(self) -> FeatureExtractor | None:
        c = self.config
        return FeatureExtractor(c.target_backbone, c.target_layers, c.weights,
                                channels_last=True).to(self.device)

    def space_channels(self) -> tuple[list[int], list[int]]:
        """Channels of the source and target space at each scale."""
        return self.source.channels, self.target.channels

    def build_mappings(self) -> nn.ModuleList:
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed + 1)
            return nn.ModuleList(build_mapping(c.mapping, cs, ct, c.latent, c.res_blocks, c.bottleneck)
                                 for cs, ct in zip(*self.space_channels())).to(self.device)

    def raw_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """What the backbones give for ``images [B, 3, S, S]``: the source maps, then the target
        maps, ``[B, C, H, W]`` each. These are what the feature cache keeps."""
        x = images.to(self.device)
        return [f.float() for f in self.source(x) + self.target(x)]

    def spaces(self, raw: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per scale ``(y, z)``: the source and target space the mapping connects, from
        :meth:`raw_features`. B-PFM: each position's vector scaled to unit length."""
        n = len(self.config.layers)
        src, tgt = raw[:n], raw[n:]
        pairs = []
        for y, z in zip(src, tgt):
            if z.shape[-2:] != y.shape[-2:]:
                z = F.interpolate(z, size=y.shape[-2:], mode="bilinear", align_corners=False)
            pairs.append((unit_positions(y), unit_positions(z)))
        return pairs

    def cache_spec(self) -> dict[str, Any]:
        c = self.config
        return {"kind": "feature_mapping", "source": [c.backbone, list(c.layers), self.source.weights],
                "target": [c.target_backbone, list(c.target_layers),
                           self.target.weights if self.target is not None else None],
                "image_size": c.image_size,
                "numerics": [e.numerics for e in (self.source, self.target) if e is not None]}

    @torch.inference_mode()
    def training_features(self, train: ImageSet, progress: bool) -> list[torch.Tensor]:
        """:meth:`raw_features` of every training image, on the CPU, ``[N, C, H, W]`` each;
        from the feature cache where it has them (a frozen backbone's features never change).
        The tensors are allocated for all ``N`` images first and filled image by image, so the
        peak is the features themselves (MB-PFM's full budget holds about 1.2 GB of them)."""
        c = self.config
        cache = FeatureCache(self.cache_spec(), dtype="float16",
                             enabled=c.cache and self.source.weights != "none")
        keys = [file_key(s.path, train.image_size) for s in train.samples]
        # NCHW float32, as the stacked per-image maps were before (whatever the backbone's layout)
        out = [torch.empty((len(train), *shape)) for shape in self._raw_shapes(train.image_size)]
        todo = []
        for i, key in enumerate(keys):
            hit = cache.get(key, NO_TRANSFORM) if cache.enabled else None
            if hit is None:
                todo.append(i)
            else:
                self._split_into(torch.from_numpy(hit), [level[i] for level in out])
        step = c.extract_batch_size
        for start in tqdm(range(0, len(todo), step), desc=f"{self.name}: features",
                          disable=not progress or not todo, leave=False):
            idx = todo[start:start + step]
            maps = self.raw_features(torch.stack([train[i] for i in idx]))
            for level, m in zip(out, maps):
                level[idx] = m.cpu()
            if cache.enabled:
                for i in idx:
                    cache.put(keys[i], NO_TRANSFORM, torch.cat([level[i].flatten() for level in out]))
        return out

    def _raw_shapes(self, size: int) -> list[torch.Size]:
        """``[C, H, W]`` of each of :meth:`raw_features`' maps for one ``size`` x ``size``
        image, found once per size (a batch-1 forward, whose graph scoring uses too)."""
        shapes = self.__dict__.setdefault("_raw_shape_lists", {})
        if size not in shapes:
            with torch.inference_mode():
                shapes[size] = [m.shape[1:] for m in self.raw_features(torch.zeros(1, 3, size, size))]
        return shapes[size]

    def _split_into(self, flat: torch.Tensor, maps: list[torch.Tensor]) -> None:
        """A cached row (every raw map of one image, flattened and joined) copied into
        ``maps``, one ``[C, H, W]`` tensor per raw map."""
        start = 0
        for m in maps:
            size = m.numel()
            m.copy_(flat[start:start + size].view(m.shape))
            start += size

    # -- fit --------------------------------------------------------------------------------------
    def fit(self, train: ImageSet, context: FitContext | None = None) -> dict[str, Any]:
        context = self.fit_context(context)
        if len(train) == 0:
            raise ValueError(f"{self.name} needs at least one training image")
        t0 = time.perf_counter()
        raw = self.training_features(train, context.progress)
        extract_seconds = time.perf_counter() - t0
        # the backbones are idle until scoring: hand back their ONNX Runtime sessions (whose
        # memory arenas hold about as much as the features at the full budget) and the freed
        # heap before the spaces and the mappings' training claim memory of their own
        release_free_memory()
        log: dict[str, Any] = {"extract_seconds": round(extract_seconds, 3),
                               "n_images": len(train)}
        log.update(self.fit_spaces(raw, context))
        with torch.no_grad():
            pairs = self._batched_spaces(raw)
        del raw  # the mappings train on the pairs alone
        log.update(self.fit_mappings(pairs, context))
        self._fitted = True
        return log

    def fit_spaces(self, raw: list[torch.Tensor], context: FitContext) -> dict[str, Any]:
        """Learn whatever builds the spaces from the raw features (B-PFM: nothing)."""
        return {}

    def epochs_before_mapping(self) -> int:
        """Training epochs :meth:`fit_spaces` reports before the mappings' (B-PFM: none), so
        the fit's progress counts one sequence of epochs."""
        return 0

    def _batched_spaces(self, raw: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`spaces` of all training features, in batches, on the CPU, gathered into
        tensors allocated once (:func:`kit.rows.gather_rows`: the peak is the result, not twice)
        with the dtype and memory layout ``torch.cat`` of the pieces would give."""
        step, n = self.config.extract_batch_size, raw[0].shape[0]

        def batches():
            for start in range(0, n, step):
                pairs = self.spaces([r[start:start + step].to(self.device) for r in raw])
                yield start, [t for pair in pairs for t in pair]

        flat = list(gather_rows(n, batches(), keep_layout=True).values())
        return list(zip(flat[0::2], flat[1::2]))

    def fit_mappings(self, pairs: list[tuple[torch.Tensor, torch.Tensor]],
                     context: FitContext) -> dict[str, Any]:
        """Train one mapping per scale on the training pairs (eq. 13)."""
        c = self.config
        epoch_offset = self.epochs_before_mapping()
        t0 = time.perf_counter()
        self.mappings = self.build_mappings()
        total = epoch_offset + len(pairs) * c.map_epochs  # one scale's mapping after another
        losses = []
        for k, ((y, z), mapping) in enumerate(zip(pairs, self.mappings)):
            done = epoch_offset + k * c.map_epochs
            gen = torch.Generator().manual_seed(c.seed + 10 + k)
            losses.append(fit_mapping(
                mapping, y, z, c.map_epochs, c.map_lr, c.map_weight_decay, c.map_batch_size, gen,
                self.device, context.progress, desc=f"{self.name}: mapping {k + 1}/{len(pairs)}",
                on_epoch=lambda e, loss, done=done: context.epoch_done(done + e + 1, total, map_loss=loss)))
        mean_loss = [sum(values) / len(values) for values in zip(*losses)] if losses else []
        return {"map_loss": mean_loss, "map_seconds": round(time.perf_counter() - t0, 3)}

    # -- predict ----------------------------------------------------------------------------------
    def _final(self, m: torch.Tensor) -> torch.Tensor:
        """A small map ``[B, h, w]`` upsampled to the image and blurred, ``[B, S, S]``, in one step."""
        return upsample_blur(m, self.config.image_size, self.config.blur_sigma)

    def residuals(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward and backward residual maps (``kit.mapping.residual_maps``), each scale's
        upsampled to the image and blurred, averaged over scales, ``[B, S, S]`` each. Upsampling
        and blurring are linear, so this equals blurring the mean of the upsampled maps."""
        forward = backward = 0.0
        for (y, z), mapping in zip(pairs, self.mappings):
            z_mapped, y_mapped = mapping(y, z)
            f, b = residual_maps(y, z, z_mapped, y_mapped)
            forward = forward + self._final(f)
            backward = backward + self._final(b)
        n = len(pairs)
        return forward / n, backward / n

    def _prediction(self, forward: torch.Tensor, backward: torch.Tensor,
                    **extra_maps: torch.Tensor) -> Prediction:
        """The map is the mean of the two residual maps; the image score its maximum."""
        maps = 0.5 * (forward + backward)
        return Prediction(image_scores=maps.flatten(1).max(1).values, anomaly_maps=maps,
                          named_maps={"forward": forward, "backward": backward, **extra_maps})

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> Prediction:
        self._check_input(images)
        return self._prediction(*self.residuals(self.spaces(self.raw_features(images))))

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``source`` and ``target``: each space's vectors averaged over positions and
        concatenated over scales, ``[B, sum C]``, as the mapping sees them."""
        pairs = self.spaces(self.raw_features(images))
        return {"source": torch.cat([y.mean(dim=(2, 3)) for y, _ in pairs], 1),
                "target": torch.cat([z.mean(dim=(2, 3)) for _, z in pairs], 1)}

    # -- checkpoint -------------------------------------------------------------------------------
    def modules(self) -> list[nn.Module]:
        return [m for m in (self.source, self.target, self.mappings) if m is not None]

    def state_dict(self) -> dict[str, Any]:
        return {"mappings": self.mappings.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mappings = self.build_mappings()
        self.mappings.load_state_dict(state["mappings"])
        self.mappings.eval()
        self._fitted = True
