"""NF-BMR (Zhang et al., CMC 2024): a flow-built Gaussian target space and a bidirectional
residual mapping between it and the CNN's source space.

B-PFM (``kit/methods/bpfm.py``) maps between two pretrained CNNs, whose spaces are both
complex and largely redundant. NF-BMR keeps the source CNN (SNN) and builds the target space
with a normalizing flow (TNF) trained on the source features, so the target is ``N(0, I)`` by
construction and a defect lands in its tails:

    y = SNN(x)                   [B, C, h, w]; ours: standardised per channel (training stats)
    z = TNF(y)                   Real-NVP, conv subnets; trained by max. likelihood (eq. 2-8)
    z^MT = TMNN(y)   y^MS = SMNN(z)                                 BMR (eq. 9-10)
    loss = MSE(z^MT, z) + MSE(y^MS, y)                              (eq. 11-13), SNN, TNF frozen
    ASM  = 1/2 (||y - y^MS||^2 + ||z - z^MT||^2)   per position     (eq. 14)

The map is upsampled to the image and blurred; the image score is its maximum. Named maps
of the same run: ``forward`` (``||z - z^MT||^2``), ``backward`` (``||y - y^MS||^2``) and
``NF``, the flow's own negative log-likelihood per position, which is Table 5's "NF alone"
scorer. ``mapping="pfm"`` puts B-PFM's 1x1 mapping between the same two spaces (Table 5's
"NF + B-PFM").

The paper's equation images are missing from its text; eq. 14's form (the sum of the two
squared residuals at each position) follows its description and B-PFM's code, halved so
it is their mean.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from kit.backbones import FeatureExtractor
from kit.flows import Flow, fit_flow, subnet_conv
from kit.mapping import ChannelStandardizer
from kit.method import FitContext, Prediction, register
from kit.methods.bpfm import BPfm, BPfmConfig
from kit.papers.nf_bmr import PAPER


@dataclass
class NfBmrConfig(BPfmConfig):
    # backbone, layers, image_size: the source domain, as in B-PFM (paper: b5 block 36 at 768 px)
    target_layers: tuple[int, ...] = (4,)  # the second CNN's stage: only for the "target" embedding of Fig. 7
    # -- TNF: the target flow (kit/flows.py) --
    flow_blocks: int = 4  # Real-NVP coupling blocks (paper: 4)
    flow_hidden: int = 1024  # hidden channels of each coupling's subnet (paper: 1024)
    flow_kernel: int = 3  # subnet conv kernel (ours: the paper does not say; 3 x 3 gives each position its neighbours)
    flow_clamp: float = 3.0  # soft clamp of the log-scales (ours: DifferNet's atan clamp, alpha 3)
    flow_lr: float = 2e-4  # Adam (paper: 2e-4)
    flow_weight_decay: float = 1e-5  # (paper: 1e-5)
    flow_batch_size: int = 8  # (paper: 8)
    flow_epochs: int = 300  # (paper: 300)
    # -- BMR --
    mapping: str = "bmr"  # "bmr": NF-BMR; "pfm": B-PFM's mapping between the same spaces (Table 5's NF+B-PFM)
    latent: int = 1024  # c_latent, the mapping's width (paper: 1024)
    map_epochs: int = 300  # (paper: 300)

    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Why each budget has these values: PAPER.budget_notes (kit/papers/nf_bmr.py).
        "quick": dict(image_size=256, flow_hidden=128, flow_epochs=8, latent=256, map_epochs=20,
                      max_train_images=240),
        "full": dict(image_size=384, flow_hidden=128, flow_epochs=12, latent=256, map_epochs=40),
    }
    LIMITS: ClassVar[dict[str, tuple[Any, Any]]] = {
        "flow_blocks": (1, 64), "flow_hidden": (1, 65536), "flow_kernel": (1, 15),
        "flow_clamp": (1e-3, 100.0), "flow_lr": (1e-8, 1.0), "flow_weight_decay": (0.0, 1.0),
        "flow_batch_size": (1, 4096), "flow_epochs": (0, 100_000),
    }

    def __post_init__(self):
        super().__post_init__()
        if self.flow_kernel % 2 == 0:
            raise ValueError(f"flow_kernel={self.flow_kernel}: use an odd kernel (it keeps H, W)")


@register
class NfBmr(BPfm):
    name = "nf_bmr"
    config_cls = NfBmrConfig
    paper = PAPER
    # source: the CNN's space; target: a second CNN's (B-PFM's T, for Fig. 7 only); flow: the TNF's
    feature_spaces = ("source", "target", "flow")

    def __init__(self, config: NfBmrConfig):
        super().__init__(config)
        self.standardizer = ChannelStandardizer(self.source.channels[0]).to(self.device)
        self.flow = self.build_flow()

    def build_target(self) -> FeatureExtractor | None:
        return None  # the target space is the flow's; the second CNN is built only to embed

    def space_channels(self) -> tuple[list[int], list[int]]:
        return self.source.channels, self.source.channels  # the flow keeps the channels

    def build_flow(self) -> Flow:
        c = self.config
        return Flow.build(self.source.channels[0], c.flow_blocks, subnet_conv(c.flow_hidden, c.flow_kernel),
                          clamp=c.flow_clamp, clamp_kind="atan", seed=c.seed + 2).to(self.device)

    def raw_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [f.float() for f in self.source(images.to(self.device))]

    def spaces(self, raw: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(y, z)]``: the standardised source features and the flow's latent of them."""
        y = self.standardizer(raw[0])
        z, _ = self.flow(y)
        return [(y, z)]

    # -- fit --------------------------------------------------------------------------------------
    def fit_spaces(self, raw: list[torch.Tensor], context: FitContext) -> dict[str, Any]:
        """Standardise the source channels, then train the TNF on the training features."""
        c = self.config
        self.standardizer.fit(raw[0])
        with torch.no_grad():
            y = self.standardizer(raw[0].to(self.device)).cpu()
        self.flow = self.build_flow()
        total = c.flow_epochs + len(self.mappings) * c.map_epochs
        t0 = time.perf_counter()
        losses = fit_flow(self.flow, y, c.flow_epochs, c.flow_lr, c.flow_weight_decay,
                          c.flow_batch_size, torch.Generator().manual_seed(c.seed + 3), self.device,
                          context.progress, desc="nf_bmr: TNF",
                          on_epoch=lambda e, loss: context.epoch_done(e + 1, total, flow_nll=loss))
        return {"flow_nll": losses, "flow_seconds": round(time.perf_counter() - t0, 3)}

    def epochs_before_mapping(self) -> int:
        return self.config.flow_epochs

    # -- predict ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> Prediction:
        self._check_input(images)
        y = self.standardizer(self.raw_features(images)[0])
        z, logdet = self.flow(y, per_position=True)
        nf = 0.5 * z.pow(2).sum(1) - logdet  # the flow's NLL at each position [B, h, w]
        return self._prediction(*self.residuals([(y, z)]), NF=self._final(nf))

    @torch.inference_mode()
    def space_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fig. 7's three spaces at every position, ``[B, C, h, w]`` each: ``source`` (the SNN's
        standardised features), ``target`` (B-PFM's second CNN, as it comes: it is not part of
        NF-BMR and only shows what a CNN target space looks like) and ``flow`` (the TNF's latent)."""
        if getattr(self, "_second_cnn", None) is None:
            c = self.config
            # built outside inference mode: weights made inside it keep no version count, and
            # ONNX Runtime's graph cache would hash them again at every call (kit/ort.py)
            with torch.inference_mode(False):
                self._second_cnn = FeatureExtractor(c.target_backbone, c.target_layers[:1],
                                                    c.weights, channels_last=True).to(self.device)
        x = images.to(self.device)
        y = self.standardizer(self.raw_features(x)[0])
        z, _ = self.flow(y)
        return {"source": y, "target": self._second_cnn(x)[0].float(), "flow": z}

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`space_maps` averaged over positions, ``[B, C]`` per space."""
        return {name: m.mean(dim=(2, 3)) for name, m in self.space_maps(images).items()}

    # -- checkpoint -------------------------------------------------------------------------------
    def modules(self) -> list[nn.Module]:
        return [self.source, self.standardizer, self.flow, self.mappings]

    def state_dict(self) -> dict[str, Any]:
        return {"mappings": self.mappings.state_dict(), "flow": self.flow.state_dict(),
                "standardizer": self.standardizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.flow = self.build_flow()
        self.flow.load_state_dict(state["flow"])
        self.flow.eval()
        self.standardizer.load_state_dict(state["standardizer"])
