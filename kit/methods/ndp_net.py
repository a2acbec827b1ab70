"""NDP-Net (Luo, Yao, Yu, IEEE TIM 2023): reconstruction with reference-based attention, a
pixel-level defect-perception loss and a multi-scale segmentation head.

The kit's reconstruction method, a counterpoint to the flows. Four parts, two training phases:

- **Encoder** ``Phi``, five stages (ours: ImageNet EfficientNet-Lite0, strides 2-32). Phase 1
  teaches it to *see* defects at pixel level: for a normal image ``I_o`` and its synthetic-defect
  copy ``I_ad = I_o (1 - I_m) + I_n I_m`` (eq. 1, ``kit/synthetic.py``), the normalised
  feature difference at every stage should be the mask (eq. 2, ``kit/losses.py``).
- **RBAM** on the three deepest stages (``kit/rbam.py``): each defective feature map is rebuilt
  from the patches of ONE fixed normal reference image (K = 2 and 4, eq. 3-5) and fused with the
  input by a selective-kernel attention (eq. 6-8), trained to give the clean image's features
  (the feature-repair loss, eq. 9).
- **Decoder**: a U-Net decoder (``kit/unet.py``) from the repaired stride-8/16/32 maps back to
  the image, the normal background. Phase 1: ``100 MSE + 1 perceptual`` on normal images
  (eq. 12-14); phase 2: the same losses from the repaired features of ``I_ad`` to ``I_o``
  (eq. 15-16). The perceptual loss reads a frozen ImageNet Lite0 (the paper: VGG-16).
- **MSDSM** (``kit/segmentation.py``): ``I`` and its reconstruction ``I_b`` go through the
  encoder's first three stages again; per stage their features are concatenated and a head
  predicts the defect, trained with the focal loss (eq. 10). The map is
  ``0.2 AM_1 + 0.2 AM_2 + 0.6 AM_3`` upsampled (eq. 11), then a 5x5 mean and a 5x5 median
  filter; the image score is its maximum.

Phase 2 (eq. 17) trains RBAM, decoder and MSDSM together with the encoder frozen; test time is
phase 2's forward pass. Named maps of one run: ``AM1``-``AM3`` (upsampled probabilities) and
Table VI's alternatives to the MSDSM on the same reconstruction, ``pixel_gap``
(``mean_RGB (I - I_b)^2``), ``msfr`` (the multi-scale feature residual of the first three
stages) and ``ssim`` (``1 - SSIM``), each smoothed like the final map. Reconstructions are kept.

Where the paper is silent the config comments say "ours" and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kit.backbones import FeatureExtractor, encode_all
from kit.data import ImageSet
from kit.losses import defect_perception_loss, feature_difference, focal_loss, perceptual_l1
from kit.maps import mean_filter, median_filter, ssim_map, upsample
from kit.method import AnomalyMethod, FitContext, MethodConfig, Prediction, register
from kit.papers.ndp_net import PAPER
from kit.rbam import ReferenceAttention
from kit.segmentation import MultiScaleSegmentation
from kit.synthetic import DefectGenerator, SyntheticConfig, defect_set, fit_generator
from kit.unet import PixelDecoder

STAGES = (0, 1, 2, 3, 4)  # the encoder's five stages (timm feature_info of EfficientNet-Lite)
DEEP = (2, 3, 4)  # where the RBAMs sit and what the decoder reads (paper: l_1 = 3 .. l_2 = 5)
SHALLOW = (0, 1, 2)  # what the MSDSM reads: the first three stages
REFERENCES = ("first", "medoid")
SEGMENTATIONS = ("msdsm", "pixel_gap", "msfr", "ssim")


@dataclass
class NdpNetConfig(MethodConfig):
    # backbone: the encoder's initial weights (paper: five encoder layers, not said to be
    # pretrained; ours: ImageNet Lite0, fine-tuned in phase 1 with its BatchNorm statistics kept)
    # -- artificial defects (eq. 1, kit/synthetic.py) --
    synthetic_shapes: tuple[str, ...] = ("perlin",)  # DRAEM's random Perlin masks (paper: "similar to DRAEM")
    synthetic_sources: tuple[str, ...] = ("dtd",)  # paper: ImageNet natural images; offline, DTD textures
    synthetic_beta: tuple[float, float] = (0.0, 0.0)  # eq. 1 replaces the image in the mask (DRAEM blends: 0-0.8)
    synthetic_keep_gray: bool = False  # kit: a gray source on gray images (off: colour sources, as the paper's)
    regen_every: int = 1  # a new synthetic set every N epochs (ours; DRAEM draws a new defect per sample)
    # -- RBAM (kit/rbam.py) --
    rbam: bool = True  # False: Table VI's B, the decoder reads the unrepaired features
    patch_sizes: tuple[int, ...] = (2, 4)  # K of the RBFRMs (paper: 2 and 4)
    attention_scale: float = 1.0  # softmax(scale * cosine) of eq. 4 (paper: 1; contextual attention uses 10)
    fusion_kernel: int = 5  # m of the FFM (paper: 5, larger than the largest K)
    fusion_channels: int = 64  # the FFM's compressed width (paper: 64)
    reference: str = "first"  # "first": the first training image by path (the authors' TFA-Net code);
    #                           "medoid" (ours): the one whose stride-32 features are nearest the mean
    # -- decoder (kit/unet.py) --
    decoder_ratio: float = 0.5  # decoder widths / encoder widths (ours; the paper's Fig. 1 has no widths)
    decoder_min_channels: int = 16  # floor of every decoder width (ours)
    decoder_blocks: tuple[int, int, int, int] = (1, 2, 2, 1)  # bottlenecks per decoder stage (ours)
    perceptual_backbone: str = "tf_efficientnet_lite0"  # D_l of eq. 13 (paper: VGG-16, 5 ReLU maps; offline Lite0's 5 stages)
    # -- MSDSM (kit/segmentation.py) --
    segmentation: str = "msdsm"  # the primary map: "msdsm" (paper) or Table VI's D-F rules on the same run
    seg_hidden: tuple[int, int, int] = (16, 32, 64)  # DSM_1..3 widths (ours; the paper's Fig. 6 is not in its text)
    seg_weights: tuple[float, float, float] = (0.2, 0.2, 0.6)  # lambda_1..3 of eq. 11 (paper)
    focal_gamma: float = 2.0  # focal loss gamma (Lin et al.'s and DRAEM's 2; the paper does not say)
    focal_alpha: float | None = None  # focal loss class weight (None: none, as DRAEM)
    filter_size: int = 5  # the mean and median filters' window (paper: 5 x 5)
    table6_maps: bool = True  # also the named maps AM1-3 and Table VI's D-F rules (off: the primary map only, faster)
    # -- losses (eq. 14 and 17; paper values) --
    w_rec1: float = 100.0  # phase 1 MSE
    w_per1: float = 1.0  # phase 1 perceptual
    w_def_per: float = 1.0  # phase 1 defect perception, eq. 2 (0: Table VI's C)
    w_rec2: float = 100.0  # phase 2 MSE
    w_per2: float = 1.0  # phase 2 perceptual
    w_fea_rep: float = 1.0  # phase 2 feature repair, eq. 9
    w_seg: float = 1.0  # phase 2 focal segmentation, eq. 10
    # -- optimisation (paper: Adam lr 1e-4, wd 1e-5, 400 + 200 epochs; batch not given) --
    lr: float = 1e-4  # both phases
    weight_decay: float = 1e-5
    train_batch_size: int = 8  # (ours)
    phase1_epochs: int = 400
    phase2_epochs: int = 200

    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Why each budget has these values: PAPER.budget_notes (kit/papers/ndp_net.py).
        "quick": dict(max_train_images=48, phase1_epochs=2, phase2_epochs=4, lr=1e-3),
        "full": dict(phase1_epochs=4, phase2_epochs=8, lr=1e-3, regen_every=2),
    }
    LIMITS: ClassVar[dict[str, tuple[Any, Any]]] = {
        "synthetic_beta": (0.0, 1.0), "regen_every": (1, 100_000), "patch_sizes": (1, 64),
        "attention_scale": (0.0, 1e4), "fusion_kernel": (1, 15), "fusion_channels": (1, 4096),
        "decoder_ratio": (0.01, 4.0), "decoder_min_channels": (1, 4096), "decoder_blocks": (1, 64),
        "seg_hidden": (1, 4096), "seg_weights": (0.0, 1e3), "focal_gamma": (0.0, 10.0),
        "focal_alpha": (0.0, 1.0), "filter_size": (1, 31), "w_rec1": (0.0, 1e6), "w_per1": (0.0, 1e6),
        "w_def_per": (0.0, 1e6), "w_rec2": (0.0, 1e6), "w_per2": (0.0, 1e6), "w_fea_rep": (0.0, 1e6),
        "w_seg": (0.0, 1e6), "lr": (1e-8, 1.0), "weight_decay": (0.0, 1.0),
        "train_batch_size": (1, 4096), "phase1_epochs": (0, 100_000), "phase2_epochs": (1, 100_000),
    }

    def __post_init__(self):
        super().__post_init__()
        for name, value, known in (("reference", self.reference, REFERENCES),
                                   ("segmentation", self.segmentation, SEGMENTATIONS)):
            if value not in known:
                raise ValueError(f"{name}={value!r}: use one of {known}")
        if self.filter_size % 2 == 0 or self.fusion_kernel % 2 == 0:
            raise ValueError(f"filter_size={self.filter_size}, fusion_kernel={self.fusion_kernel}: "
                             "use odd sizes (they keep H, W)")
        if not self.patch_sizes:
            raise ValueError("patch_sizes needs at least one K")
        if self.image_size % 32:
            raise ValueError(f"image_size={self.image_size}: use a multiple of 32 (the decoder "
                             "doubles the stride-32 map back to the image)")
        SyntheticConfig(shapes=self.synthetic_shapes, sources=self.synthetic_sources,
                        beta_range=self.synthetic_beta)  # checks the recipe now


def _images(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` -> float in [0, 1] on ``device``."""
    return batch.to(device).float().div_(255)


@register
class NdpNet(AnomalyMethod):
    name = "ndp_net"
    config_cls = NdpNetConfig
    paper = PAPER
    # source: the encoder's stride-32 features of the input; repaired: the RBAM's output there
    feature_spaces = ("source", "repaired")

    def __init__(self, config: NdpNetConfig):
        super().__init__(config)
        c = config
        with torch.random.fork_rng(devices=[]):  # untrained ("none") weights depend on the seed only
            torch.manual_seed(c.seed)
            self.encoder = FeatureExtractor(c.backbone, STAGES, c.weights, channels_last=True,
                                            trainable=True).to(self.device)
            ch = self.encoder.channels
            torch.manual_seed(c.seed + 1)
            self.rbams = nn.ModuleList(ReferenceAttention(ch[i], c.patch_sizes, c.attention_scale,
                                                          c.fusion_kernel, c.fusion_channels)
                                       for i in DEEP).to(self.device)
            self.decoder = PixelDecoder([ch[i] for i in DEEP], 3, c.decoder_ratio,
                                        c.decoder_min_channels, c.decoder_blocks).to(self.device)
            self.msdsm = MultiScaleSegmentation([2 * ch[i] for i in SHALLOW], c.seg_hidden).to(self.device)
        self.reference_image: torch.Tensor | None = None  # uint8 [3, S, S], from the training set
        self.reference_path = ""
        self._reference_features: list[torch.Tensor] = []  # [1, C_l, H_l, W_l] per DEEP stage

    # -- the forward pass -------------------------------------------------------------------------
    def repair(self, deep: list[torch.Tensor]) -> list[torch.Tensor]:
        """RBAM on the three deepest maps ``[B, C_l, H_l, W_l]`` (unchanged when ``rbam`` is off)."""
        if not self.config.rbam:
            return list(deep)
        return [m(f, r) for m, f, r in zip(self.rbams, deep, self._reference_features)]

    def reconstruct(self, repaired: list[torch.Tensor]) -> torch.Tensor:
        """The decoder: repaired deep maps -> the image ``[B, 3, S, S]`` in [0, 1]."""
        return torch.sigmoid(self.decoder(repaired, self.config.image_size))

    def segment(self, shallow_in: list[torch.Tensor], recon: torch.Tensor
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(MSDSM logits [B, H_i, W_i], the reconstruction's first three maps)`` from the input's
        first three maps ``[B, C_i, H_i, W_i]`` and the reconstruction ``[B, 3, S, S]``."""
        shallow_b = self.encoder(recon, only=SHALLOW)
        return self.msdsm([torch.cat([a, b], 1) for a, b in zip(shallow_in, shallow_b)]), shallow_b

    def smooth(self, maps: torch.Tensor) -> torch.Tensor:
        """The paper's 5x5 mean, then 5x5 median filter, ``[B, S, S]``."""
        k = self.config.filter_size
        return median_filter(mean_filter(maps, k), k) if k > 1 else maps

    # -- fit --------------------------------------------------------------------------------------
    def generator(self, train: ImageSet, context: FitContext) -> DefectGenerator:
        c = self.config
        recipe = SyntheticConfig(shapes=c.synthetic_shapes, sources=c.synthetic_sources,
                                 beta_range=c.synthetic_beta, keep_gray=c.synthetic_keep_gray)
        return fit_generator(context.synthetic, [s.path for s in train.samples], c.image_size, c.seed,
                             recipe)

    def _perceptual(self) -> FeatureExtractor:
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            return FeatureExtractor(c.perceptual_backbone, STAGES, c.weights,
                                    channels_last=True).to(self.device)

    def fit(self, train: ImageSet, context: FitContext | None = None) -> dict[str, Any]:
        c = self.config
        context = self.fit_context(context)
        if len(train) < 1:
            raise ValueError("ndp_net needs at least one training image")
        clean = train.tensor(progress=context.progress)
        gen = self.generator(train, context)
        perceptual = self._perceptual()
        log: dict[str, Any] = {"encoder_init": self.encoder.weights}
        t0 = time.perf_counter()
        # D_l(I_o) of eq. 13 and 16: the perceptual net is frozen, so once for both phases
        targets = encode_all(perceptual, clean, c.batch_size, self.device, torch.float16,
                             context.progress, f"{self.name}: perceptual targets")
        log["phase1"] = self.fit_phase1(clean, gen, perceptual, targets, context)
        log["phase1_seconds"] = round(time.perf_counter() - t0, 3)
        for p in self.encoder.parameters():  # phase 2 and test time read a frozen encoder
            p.requires_grad_(False)
        index = self.choose_reference(clean, [str(sample.path) for sample in train.samples])
        self.set_reference(clean[index], str(train.samples[index].path))
        log["reference"] = {"index": index, "path": self.reference_path, "rule": c.reference}
        t1 = time.perf_counter()
        log["phase2"] = self.fit_phase2(clean, gen, perceptual, targets, context)
        log["phase2_seconds"] = round(time.perf_counter() - t1, 3)
        self._fitted = True
        return log

    def _synthetic(self, gen: DefectGenerator, clean: torch.Tensor, epoch: int, phase: int,
                   progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The synthetic set of ``epoch`` of a phase: ``(uint8 [N, 3, S, S], masks bool [N, S, S])``;
        keys never repeat across phases and sets."""
        n = len(clean)
        first = ((phase - 1) * 100_000 + epoch // self.config.regen_every) * n
        images, _, masks = defect_set(gen, clean, first, progress, f"{self.name}: synthetic defects")
        return images, masks

    def _rows(self, cached: list[torch.Tensor], idx: torch.Tensor) -> list[torch.Tensor]:
        """Rows ``idx`` of cached maps, as float32 on the device."""
        return [m[idx].to(self.device).float() for m in cached]

    def _epochs(self, n: int, epochs: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            yield epoch, torch.randperm(n, generator=gen).split(self.config.train_batch_size)

    def fit_phase1(self, clean: torch.Tensor, gen: DefectGenerator, perceptual: FeatureExtractor,
                   targets: list[torch.Tensor], context: FitContext) -> dict[str, list[float]]:
        """Encoder and decoder: reconstruct normal images (eq. 12-13) and perceive synthetic
        defects (eq. 2). Returns the mean of each loss term per epoch."""
        c = self.config
        total = c.phase1_epochs + c.phase2_epochs
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        history: dict[str, list[float]] = {"rec": [], "per": [], "def_per": [], "loss": []}
        self.decoder.train()
        defects = masks = None
        for epoch, batches in self._epochs(len(clean), c.phase1_epochs, c.seed + 3):
            if c.w_def_per > 0 and epoch % c.regen_every == 0:
                defects, masks = self._synthetic(gen, clean, epoch, 1, context.progress)
            sums = dict.fromkeys(history, 0.0)
            for idx in tqdm(batches, desc=f"{self.name}: phase 1 epoch {epoch + 1}/{c.phase1_epochs}",
                            disable=not context.progress, leave=False):
                x = _images(clean[idx], self.device)
                feats = self.encoder(x)
                recon = self.reconstruct([feats[i] for i in DEEP])
                rec = F.mse_loss(recon, x)
                per = perceptual_l1(perceptual(recon), self._rows(targets, idx))
                loss = c.w_rec1 * rec + c.w_per1 * per
                def_per = torch.zeros(())
                if c.w_def_per > 0:
                    feats_ad = self.encoder(_images(defects[idx], self.device))
                    def_per = defect_perception_loss(feats, feats_ad, masks[idx].to(self.device))
                    loss = loss + c.w_def_per * def_per
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for key, value in (("rec", rec), ("per", per), ("def_per", def_per), ("loss", loss)):
                    sums[key] += float(value.detach()) * len(idx)
            for key in history:
                history[key].append(round(sums[key] / len(clean), 6))
            context.epoch_done(epoch + 1, total, **{f"phase1_{k}": v[-1] for k, v in history.items()})
        self.decoder.eval()
        return history

    @torch.no_grad()
    def choose_reference(self, clean: torch.Tensor, paths: list[str]) -> int:
        """Index of the fixed reference image among the training images (never a test image):
        ``"first"``, the first by path; ``"medoid"``, the one whose mean stride-32 feature is
        nearest the training mean."""
        if self.config.reference == "first":
            return min(range(len(paths)), key=paths.__getitem__)
        pooled = []
        for start in range(0, len(clean), self.config.batch_size):
            x = _images(clean[start:start + self.config.batch_size], self.device)
            pooled.append(self.encoder(x, only=(STAGES[-1],))[0].float().mean(dim=(2, 3)).cpu())
        pooled = torch.cat(pooled)
        return int((pooled - pooled.mean(0)).norm(dim=1).argmin())

    @torch.no_grad()
    def set_reference(self, image: torch.Tensor, path: str = "") -> None:
        """Fix the reference image (uint8 ``[3, S, S]``) and its deep features."""
        self.reference_image = image.clone()
        self.reference_path = path
        feats = self.encoder(_images(image[None], self.device), only=DEEP)
        self._reference_features = [f.float().contiguous() for f in feats]

    def fit_phase2(self, clean: torch.Tensor, gen: DefectGenerator, perceptual: FeatureExtractor,
                   targets: list[torch.Tensor], context: FitContext) -> dict[str, list[float]]:
        """RBAM, decoder and MSDSM with the encoder frozen (eq. 17): repair the synthetic
        defects' features (eq. 9), reconstruct the clean image (eq. 15-16) and segment the defect
        from the input and its reconstruction (eq. 10)."""
        c = self.config
        trained = [self.decoder, self.msdsm] + ([self.rbams] if c.rbam else [])
        params = [p for m in trained for p in m.parameters()]
        opt = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        history: dict[str, list[float]] = {"rec": [], "per": [], "fea_rep": [], "seg": [], "loss": [],
                                           "synthetic_normal": []}
        for m in trained:
            m.train()
        # the encoder is frozen now: the clean images' deep maps (eq. 9's targets) are fixed, and
        # a synthetic set's maps are fixed for the regen_every epochs it is used
        deep = lambda x: self.encoder(x, only=DEEP)  # noqa: E731
        clean_deep = (encode_all(deep, clean, c.batch_size, self.device, torch.float16,
                                 context.progress, f"{self.name}: clean features") if c.rbam else None)
        masks = feats_ad_all = None
        for epoch, batches in self._epochs(len(clean), c.phase2_epochs, c.seed + 4):
            if epoch % c.regen_every == 0:
                defects, masks = self._synthetic(gen, clean, epoch, 2, context.progress)
                empty = int((~masks.flatten(1).any(1)).sum())
                feats_ad_all = encode_all(self.encoder, defects, c.batch_size, self.device,
                                          torch.float16, context.progress,
                                          f"{self.name}: synthetic-defect features")
                del defects
            sums = dict.fromkeys(["rec", "per", "fea_rep", "seg", "loss"], 0.0)
            for idx in tqdm(batches, desc=f"{self.name}: phase 2 epoch {epoch + 1}/{c.phase2_epochs}",
                            disable=not context.progress, leave=False):
                x_o = _images(clean[idx], self.device)
                mask = masks[idx].to(self.device).float()
                feats_ad = self._rows(feats_ad_all, idx)
                repaired = self.repair([feats_ad[i] for i in DEEP])
                recon = self.reconstruct(repaired)
                logits, _ = self.segment([feats_ad[i] for i in SHALLOW], recon)
                rec = F.mse_loss(recon, x_o)
                per = perceptual_l1(perceptual(recon), self._rows(targets, idx))
                fea = (torch.stack([F.mse_loss(r, f) for r, f in
                                    zip(repaired, self._rows(clean_deep, idx))]).mean()
                       if c.rbam else torch.zeros((), device=self.device))
                seg = torch.stack([
                    focal_loss(lg, F.interpolate(mask[:, None], size=lg.shape[-2:], mode="area")[:, 0],
                               c.focal_gamma, c.focal_alpha) for lg in logits]).mean()
                loss = c.w_rec2 * rec + c.w_per2 * per + c.w_fea_rep * fea + c.w_seg * seg
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for key, value in (("rec", rec), ("per", per), ("fea_rep", fea), ("seg", seg), ("loss", loss)):
                    sums[key] += float(value.detach()) * len(idx)
            for key, value in sums.items():
                history[key].append(round(value / len(clean), 6))
            history["synthetic_normal"].append(empty)
            context.epoch_done(c.phase1_epochs + epoch + 1, c.phase1_epochs + c.phase2_epochs,
                               **{f"phase2_{k}": history[k][-1] for k in sums})
        for m in trained:
            m.eval()
        return history

    # -- predict ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> Prediction:
        self._check_input(images)
        c, s = self.config, self.config.image_size
        x = images.to(self.device).float()
        feats = self.encoder(x)
        recon = self.reconstruct(self.repair([feats[i] for i in DEEP]))
        shallow_in = [feats[i] for i in SHALLOW]
        logits, shallow_b = self.segment(shallow_in, recon)
        rules = {  # each [B, S, S]; only the primary one unless table6_maps
            "msdsm": lambda: self.smooth(sum(w * m for w, m in zip(c.seg_weights, am))),  # eq. 11
            "pixel_gap": lambda: self.smooth((x - recon).pow(2).mean(1)),
            "msfr": lambda: self.smooth(torch.stack([upsample(feature_difference(a.float(), b.float()), s)
                                                     for a, b in zip(shallow_in, shallow_b)]).mean(0)),
            "ssim": lambda: self.smooth(1 - ssim_map(x, recon)),
        }
        am = [upsample(torch.sigmoid(lg).float(), s) for lg in logits]  # g(AM_i)
        primary = rules[c.segmentation]()
        named: dict[str, torch.Tensor] = {}
        if c.table6_maps:
            named = {f"AM{i + 1}": m for i, m in enumerate(am)}
            named.update({name: rule() for name, rule in rules.items() if name != c.segmentation})
        return Prediction(image_scores=primary.flatten(1).max(1).values, anomaly_maps=primary,
                          named_maps=named, reconstructions=recon.clamp(0, 1))

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``source``: the encoder's stride-32 map averaged over positions ``[B, C_5]``;
        ``repaired``: the same after the RBAM, the features the decoder reconstructs from."""
        self._check_input(images)
        deep = self.encoder(images.to(self.device).float(), only=DEEP)
        return {"source": deep[-1].float().mean(dim=(2, 3)),
                "repaired": self.repair(deep)[-1].float().mean(dim=(2, 3))}

    # -- checkpoint -------------------------------------------------------------------------------
    def modules(self) -> list[nn.Module]:
        return [self.encoder, self.rbams, self.decoder, self.msdsm]

    def state_dict(self) -> dict[str, Any]:
        if self.reference_image is None:
            raise RuntimeError("fit() first: there is no reference image yet")
        return {"encoder": self.encoder.state_dict(), "rbams": self.rbams.state_dict(),
                "decoder": self.decoder.state_dict(), "msdsm": self.msdsm.state_dict(),
                "reference_image": self.reference_image, "reference_path": self.reference_path}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.rbams.load_state_dict(state["rbams"])
        self.decoder.load_state_dict(state["decoder"])
        self.msdsm.load_state_dict(state["msdsm"])
        image = state["reference_image"]
        s = self.config.image_size
        if image.dtype != torch.uint8 or tuple(image.shape) != (3, s, s):
            raise ValueError(f"reference_image must be uint8 [3, {s}, {s}], got {image.dtype} "
                             f"{list(image.shape)}")
        self.set_reference(image, str(state.get("reference_path", "")))
        for m in self.modules():
            m.eval()
        self._fitted = True

