"""CFlow-AD (Gudovskiy, Ishizaka, Kozuka, WACV 2022): conditional flows on encoder feature maps.

Idea: a frozen pretrained encoder gives feature maps at three scales; every position of every
map is a sample ("fiber") of the normal features at that place. One normalizing flow per map,
conditioned on a positional encoding of the position, learns their density, and a position
whose features are unlikely is anomalous. The equations (CLS-CNFs eq. 2-8, which restate
CFlow-AD's) and our fixes for batch independence are in ``kit/cnf.py``:

    l_i,k = log p(y_i^k | c_i^k)                    (flow i, position k)
    A_nf  = n_max - sum_i upsample(exp(l_i,k / C_i - u_i))

``u_i`` and ``n_max`` come from the training images, so an image's map does not depend on
the other images scored with it. The image score is the map's maximum.

This is CLS-CNFs' "FE_PRE-CNFs" baseline: the encoder stays as ImageNet trained it. The
frozen encoder's training features are extracted once and kept in memory; every epoch of
the flows then reads them (CFlow-AD re-runs the encoder every epoch for its 5-degree
rotation augmentation, which this implementation leaves out).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kit.backbones import FeatureExtractor, encode_all
from kit.cnf import FiberFlows, fibers
from kit.data import ImageSet
from kit.flows import MIXINGS
from kit.method import AnomalyMethod, FitContext, MethodConfig, Prediction, register
from kit.papers.cflow import PAPER


@dataclass
class CFlowConfig(MethodConfig):
    # -- encoder --
    layers: tuple[int, ...] = (2, 3, 4)  # stages (paper: WRN50 layer2-4, strides 8/16/32; Lite0 blocks 2/4/6 as anomalib's CFlow on Lite0)
    # -- flows (kit/cnf.py) --
    n_blocks: int = 8  # coupling blocks per flow (CFlow-AD: 8; CLS-CNFs: 6)
    cond_channels: int = 128  # P, channels of the 2D positional encoding (code: 128)
    clamp: float = 1.9  # tanh soft clamp of the log-scales (code: 1.9)
    mixing: str = "orthogonal"  # channel mixing between couplings: "orthogonal" (code: permute_soft=True) or "permutation"
    global_affine: bool = True  # learned per-channel scale + offset after each coupling (code: SOFTPLUS global affine)
    # -- training --
    lr: float = 2e-4  # Adam (code: 2e-4, warm-up then cosine decay)
    fiber_batch: int = 256  # fibers per step (code: 256)
    epochs: int = 3  # passes over every training fiber (code: 25 meta-epochs x 8 sub-epochs on MVTec)
    extract_batch_size: int = 16  # images per encoder batch while extracting training features

    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Why each budget has these values: PAPER.budget_notes (kit/papers/cflow.py).
        "quick": dict(epochs=1),
        "full": dict(epochs=3),
    }
    LIMITS: ClassVar[dict[str, tuple[Any, Any]]] = {
        "layers": (0, 8), "n_blocks": (1, 64), "cond_channels": (4, 4096), "clamp": (1e-3, 100.0),
        "lr": (1e-8, 1.0), "fiber_batch": (1, 1_000_000), "epochs": (0, 100_000),
        "extract_batch_size": (1, 4096),
    }

    def __post_init__(self):
        super().__post_init__()
        if self.mixing not in MIXINGS:
            raise ValueError(f"mixing={self.mixing!r}: use one of {MIXINGS}")
        if self.cond_channels % 4:
            raise ValueError(f"cond_channels={self.cond_channels}: the 2D positional encoding "
                             "needs a multiple of 4 (a sin/cos pair per frequency and axis)")


@register
class CFlow(AnomalyMethod):
    name = "cflow"
    config_cls = CFlowConfig
    paper = PAPER
    feature_spaces = ("source", "flow")

    def __init__(self, config: CFlowConfig):
        super().__init__(config)
        with torch.random.fork_rng(devices=[]):  # untrained ("none") weights depend on the seed only
            torch.manual_seed(config.seed)
            self.extractor = self.build_encoder()
        self.cnf = self.build_flows()

    def build_encoder(self) -> torch.nn.Module:
        c = self.config
        return FeatureExtractor(c.backbone, c.layers, c.weights, channels_last=True).to(self.device)

    def build_flows(self) -> FiberFlows:
        c = self.config
        return FiberFlows(self.extractor.channels, c.n_blocks, c.cond_channels, c.clamp,
                          seed=c.seed, mixing=c.mixing, global_affine=c.global_affine).to(self.device)

    # -- features ---------------------------------------------------------------------------------
    def flow_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The maps the flows model: ``[B, C_i, H_i, W_i]`` per layer."""
        return self.extractor(images.to(self.device))

    @torch.no_grad()  # not inference_mode: CLS-CNFs' decoder trains on these maps (autograd saves them)
    def encode_all(self, images: torch.Tensor, progress: bool = False,
                   desc: str = "features") -> list[torch.Tensor]:
        """The flow features of uint8 ``images [N, 3, S, S]``, on the CPU: ``[N, C_i, H_i, W_i]``
        per layer, in batches of ``extract_batch_size``."""
        return encode_all(self.flow_features, images, self.config.extract_batch_size, self.device,
                          progress=progress, desc=f"{self.name}: {desc}")

    def training_features(self, train: ImageSet, progress: bool) -> list[torch.Tensor]:
        """Every training image's flow features, on the CPU: ``[N, C_i, H_i, W_i]`` per layer."""
        return self.encode_all(train.tensor(), progress)

    def fit_flows(self, train: ImageSet, context: FitContext, epoch_offset: int = 0,
                  epochs_total: int | None = None) -> dict[str, Any]:
        """Alg. 1 step 2 and Alg. 2 step 2-1: train the flows on the (now fixed) encoder's
        training features, then set ``u`` and ``n_max`` from the same images."""
        c = self.config
        t0 = time.perf_counter()
        feats = self.training_features(train, context.progress)
        extract_seconds = time.perf_counter() - t0
        gen = torch.Generator().manual_seed(c.seed + 1)
        self.cnf = self.build_flows()
        total = epochs_total or c.epochs
        log = self.cnf.fit_fibers(
            feats, c.epochs, c.lr, c.fiber_batch, gen, context.progress, desc=self.name,
            on_epoch=lambda e, loss: context.epoch_done(epoch_offset + e + 1, total, flow_nll=loss))
        step = self.config.extract_batch_size

        self.cnf.calibrate(([f[start:start + step].to(self.device) for f in feats]
                            for start in range(0, feats[0].shape[0], step)), c.image_size)
        return {**log, "extract_seconds": round(extract_seconds, 3), "n_images": len(train),
                "fibers_per_image": [int(f.shape[2] * f.shape[3]) for f in feats],
                "u": [round(float(v), 6) for v in self.cnf.u], "n_max": round(float(self.cnf.n_max), 6)}

    def fit(self, train: ImageSet, context: FitContext | None = None) -> dict[str, Any]:
        return self.fit_flows(train, self.fit_context(context))

    # -- predict ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> Prediction:
        if torch.isnan(self.cnf.n_max):
            raise RuntimeError("fit() or load_state_dict() first")
        maps = self.cnf.anomaly_map(self.flow_features(images), images.shape[-1])
        return Prediction(image_scores=maps.flatten(1).max(1).values, anomaly_maps=maps)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``source``: each layer's features averaged over positions, concatenated ``[B, sum C_i]``;
        ``flow``: the same average of each flow's latent ``z`` ``[B, sum C_i]``."""
        feats = self.flow_features(images)
        out = {"source": torch.cat([f.float().mean(dim=(2, 3)) for f in feats], 1)}
        if not torch.isnan(self.cnf.n_max):
            latents = []
            for level, fmap in enumerate(feats):
                b, _, h, w = fmap.shape
                cond = self.cnf.map_condition(b, h, w, fmap.device)
                z, _ = self.cnf.flows[level](fibers(fmap.float()), cond)
                latents.append(z.view(b, h * w, -1).mean(1))
            out["flow"] = torch.cat(latents, 1)
        return out

    # -- checkpoint -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"cnf": self.cnf.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cnf = self.build_flows()
        self.cnf.load_state_dict(state["cnf"])
        self.cnf.eval()
