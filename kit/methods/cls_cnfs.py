"""CLS-CNFs (Oh and Kim, IEEE Access 2024): a synthetic-defect classifier fine-tunes the encoder
that CFlow-AD's conditional flows read, and the two score maps are added.

Alg. 1, step 1: a U-Net (``kit/unet.py``) on the pretrained encoder learns, pixel by pixel, where
synthetic defects are (``kit/synthetic.py``: Perlin masks, DTD or another normal image as the
source, 3 augmentations, ``beta ~ U[0, 0.8)``), against CLS-CNFs' soft labels, with

    L_cls = -(1 / HW) sum_ij [t_ij log p_ij + (1 - t_ij) log(1 - p_ij)]          (eq. 1, as BCE)

The synthetic set is drawn anew every ``N_s`` epochs. The first ``N_pD`` epochs train the
decoder alone, the rest encoder and decoder together; the encoder's BatchNorm statistics stay
ImageNet's throughout. Step 2: the encoder is frozen and the conditional flows of
``kit/cnf.py`` are trained on normal images exactly as in ``cflow``. Inference (Alg. 2):

    A_p  = sigmoid(decoder(encoder(x)))         the classifier's defect probability
    A_nf = n_max - sum_i upsample(exp(l_i / C_i - u_i))                          (eq. 3-8)
    A    = A_nf + w A_p                                                          (eq. 9)

The image score is the maximum of ``A``. ``A_p``, ``A_nf`` and ``A`` are named maps of one run
(``pre_flows=True`` adds CFlow-AD's ``A_nf_pre`` on the untouched encoder and ``A_ns``, Table 2's
"not shared" combination). The code sets ``w`` per category by hand (0.05 to 1.0) or by a grid
search on test masks; ``weight=None`` chooses it on held-out normal images with synthetic
defects instead, never on the test split. ``head="reg"`` is Table 1's FE_REG: the same network
reconstructs the defect-free image (MSE), and only its flows score.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kit import metrics as M
from kit.backbones import FeatureExtractor
from kit.cnf import FiberFlows
from kit.data import ImageSet
from kit.method import FitContext, Prediction, register
from kit.methods.cflow import CFlow, CFlowConfig
from kit.papers.cls_cnfs import PAPER
from kit.synthetic import DefectGenerator, SyntheticConfig, defect_set, fit_generator
from kit.unet import PixelDecoder

HEADS = ("cls", "reg")
WEIGHT_KEY_OFFSET = 1_000_000_007  # synthetic keys of the w search: never a training key


@dataclass
class ClsCnfsConfig(CFlowConfig):
    n_blocks: int = 6  # coupling blocks per flow (CLS-CNFs: 6)
    # -- the pixel network on the shared encoder (kit/unet.py) --
    head: str = "cls"  # "cls": classifier on soft labels (FE_CLS); "reg": reconstruction (Table 1's FE_REG)
    decoder_ratio: float = 0.25  # decoder widths / encoder widths (paper: a quarter)
    decoder_min_channels: int = 16  # ours: floor of every decoder width (a quarter of Lite0 is 6-28 channels)
    decoder_blocks: tuple[int, int, int, int] = (3, 6, 4, 3)  # bottlenecks per decoder stage (code: 3, 6, 4, 3)
    decoder_out_stride: int = 1  # 1: output block at full resolution (paper); 4: at stride 4, then bilinear (ours, CPU)
    cls_lr: float = 1e-4  # Adam, cosine decay, no warm-up (code: 1e-4 for most classes)
    cls_weight_decay: float = 1e-4  # (code: 1e-4)
    cls_batch_size: int = 16  # synthetic images per step (code: 16 or 32)
    decoder_epochs: int = 85  # N_pD, decoder-only epochs (code: 85 for most classes)
    joint_epochs: int = 15  # N_p - N_pD, encoder + decoder epochs (code: 15)
    regen_every: int = 5  # N_s: a new synthetic set every N_s epochs (code: 5)
    # -- synthetic defects (kit/synthetic.py) --
    synthetic_shapes: tuple[str, ...] = ("perlin",)  # paper: Perlin masks only
    synthetic_sources: tuple[str, ...] = ("dtd", "other")  # paper: DTD or (p = 0.5) another normal image
    # -- aggregation, eq. 9 --
    weight: float | None = None  # w; None = chosen on held-out normals with synthetic defects (code: per class by hand)
    weight_grid: tuple[float, ...] = (0.05, 0.1, 0.15, 0.3, 0.5, 0.6, 1.0)  # candidates (code's grid: 0.05-1.0)
    weight_images: int = 64  # held-out images given synthetic defects for the choice of w
    pre_flows: bool = False  # also CFlow-AD's flows on the untouched encoder: maps A_nf_pre, A_ns (Table 2)

    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Why each budget has these values: PAPER.budget_notes (kit/papers/cls_cnfs.py); the
        # classifier's were chosen on held-out normals with synthetic defects
        # (scripts/cls_cnfs_dev.py, docs/results/cls_cnfs_dev.jsonl), never on the test split.
        "quick": dict(epochs=1, decoder_epochs=10, joint_epochs=1, regen_every=5, cls_lr=3e-3,
                      decoder_blocks=(1, 2, 2, 1), decoder_out_stride=4, max_train_images=160,
                      weight_images=32),
        "full": dict(epochs=3, decoder_epochs=20, joint_epochs=4, regen_every=5, cls_lr=3e-3,
                     decoder_blocks=(1, 2, 2, 1), decoder_out_stride=4),
    }
    LIMITS: ClassVar[dict[str, tuple[Any, Any]]] = {
        "decoder_ratio": (0.01, 4.0), "decoder_min_channels": (1, 4096), "decoder_blocks": (1, 64),
        "cls_lr": (1e-8, 1.0), "cls_weight_decay": (0.0, 1.0), "cls_batch_size": (1, 4096),
        "decoder_epochs": (0, 100_000), "joint_epochs": (0, 100_000), "regen_every": (1, 100_000),
        "weight": (0.0, 1e6), "weight_grid": (0.0, 1e6), "weight_images": (1, 100_000),
        "decoder_out_stride": (1, 4),
    }

    def __post_init__(self):
        super().__post_init__()
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r}: use one of {HEADS}")
        if len(self.layers) != 3:
            raise ValueError(f"layers={self.layers}: the U-Net decoder takes 3 encoder maps")
        if not self.weight_grid:
            raise ValueError("weight_grid needs at least one candidate w")
        SyntheticConfig(shapes=self.synthetic_shapes, sources=self.synthetic_sources)  # checks names


@register
class ClsCnfs(CFlow):
    name = "cls_cnfs"
    config_cls = ClsCnfsConfig
    paper = PAPER
    feature_spaces = ("source", "flow")

    def __init__(self, config: ClsCnfsConfig):
        super().__init__(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 2)
            out = 1 if config.head == "cls" else 3
            self.decoder = PixelDecoder(self.extractor.channels, out, config.decoder_ratio,
                                        config.decoder_min_channels, config.decoder_blocks,
                                        config.decoder_out_stride).to(self.device)
        self.weight = config.weight if config.weight is not None else float("nan")
        self.extractor_pre: FeatureExtractor | None = None
        self.cnf_pre: FiberFlows | None = None

    def build_encoder(self) -> torch.nn.Module:
        c = self.config
        return FeatureExtractor(c.backbone, c.layers, c.weights, channels_last=True,
                                trainable=True).to(self.device)

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.extractor, self.decoder, self.cnf, self.extractor_pre, self.cnf_pre)
                if m is not None]

    def _frozen_copy(self) -> torch.nn.Module:
        """A copy of the encoder as it is now, with no trainable parameter."""
        copied = copy.deepcopy(self.extractor)
        for p in copied.parameters():
            p.requires_grad_(False)
        return copied

    def _component_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A_nf, raw decoder output)`` of images ``x [B, 3, S, S]`` through the shared encoder."""
        maps = self.extractor(x.to(self.device))
        s = x.shape[-1]
        return self.cnf.anomaly_map(maps, s), self.decoder(maps, s)

    # -- synthetic data ---------------------------------------------------------------------------
    def generator(self, train: ImageSet, context: FitContext) -> DefectGenerator:
        c = self.config
        recipe = SyntheticConfig(shapes=c.synthetic_shapes, sources=c.synthetic_sources)
        return fit_generator(context.synthetic, [s.path for s in train.samples], c.image_size, c.seed,
                             recipe)

    def synthetic_set(self, gen: DefectGenerator, images: torch.Tensor, first_key: int,
                      progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`kit.synthetic.defect_set` with CLS-CNFs' soft labels: ``(defect images uint8
        [N, 3, S, S], targets float16 [N, S, S], masks bool [N, S, S])``."""
        return defect_set(gen, images, first_key, progress, desc, soft_label=True)

    # -- Alg. 1 step 1: the pixel network ---------------------------------------------------------
    def _loss(self, raw: torch.Tensor, target: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """``raw [B, out, S, S]`` decoder output; ``target [B, S, S]`` soft labels; ``clean
        [B, 3, S, S]`` the defect-free images (the FE_REG target)."""
        if self.config.head == "cls":
            return F.binary_cross_entropy_with_logits(raw[:, 0], target)
        return F.mse_loss(torch.sigmoid(raw), clean)

    def fit_pixel_network(self, train: ImageSet, context: FitContext) -> dict[str, Any]:
        c = self.config
        gen = self.generator(train, context)
        clean_all = train.tensor(progress=context.progress)
        params = list(self.decoder.parameters()) + list(self.extractor.parameters())
        opt = torch.optim.Adam(params, lr=c.cls_lr, weight_decay=c.cls_weight_decay)
        epochs = c.decoder_epochs + c.joint_epochs
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
        order_gen = torch.Generator().manual_seed(c.seed + 3)
        losses, empty, t0 = [], [], time.perf_counter()
        cached: list[torch.Tensor] | None = None
        n = len(train)
        for epoch in range(epochs):
            joint = epoch >= c.decoder_epochs
            if epoch % c.regen_every == 0:  # Alg. 1 line 3: a new synthetic set
                images, target, masks = self.synthetic_set(
                    gen, clean_all, (epoch // c.regen_every) * n, context.progress,
                    f"{self.name}: synthetic defects")
                empty.append(int((~masks.flatten(1).any(1)).sum()))
                cached = None
            if not joint and cached is None:  # frozen encoder: its maps are fixed for N_s epochs
                cached = self.encode_all(images)
            self.decoder.train()
            total, seen = 0.0, 0
            order = torch.randperm(n, generator=order_gen)
            bar = tqdm(order.split(c.cls_batch_size), desc=f"{self.name}: "
                       f"{'encoder+decoder' if joint else 'decoder'} epoch {epoch + 1}/{epochs}",
                       disable=not context.progress, leave=False)
            for idx in bar:
                x = images[idx].float().div_(255).to(self.device)
                if joint:
                    maps = self.extractor(x)
                else:
                    maps = [m[idx].to(self.device) for m in cached]
                raw = self.decoder(maps, c.image_size)
                loss = self._loss(raw, target[idx].float().to(self.device),
                                  clean_all[idx].float().div_(255).to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            sched.step()
            losses.append(round(total / seen, 6))
            context.epoch_done(epoch + 1, epochs + c.epochs, **{f"{c.head}_loss": losses[-1]})
        self.decoder.eval()
        for p in self.extractor.parameters():  # step 2 reads a frozen encoder
            p.requires_grad_(False)
        return {f"{c.head}_loss": losses, "pixel_epochs": epochs, "synthetic_normal": empty,
                "pixel_seconds": round(time.perf_counter() - t0, 3)}

    # -- fit --------------------------------------------------------------------------------------
    def fit(self, train: ImageSet, context: FitContext | None = None) -> dict[str, Any]:
        c = self.config
        context = self.fit_context(context)
        log: dict[str, Any] = {}
        if c.pre_flows:  # CFlow-AD on the untouched encoder, before fine-tuning changes it
            self.extractor_pre = self._frozen_copy()
            pre = self.fit_flows(train, FitContext(seed=context.seed, device=context.device,
                                                   progress=context.progress))
            self.cnf_pre, self.cnf = self.cnf, self.build_flows()
            log["pre_flows"] = {k: v for k, v in pre.items() if k != "flow_loss"}
        log.update(self.fit_pixel_network(train, context))
        log.update(self.fit_flows(train, context, epoch_offset=c.decoder_epochs + c.joint_epochs,
                                  epochs_total=c.decoder_epochs + c.joint_epochs + c.epochs))
        if c.head == "cls":
            log["weight"] = self.choose_weight(train, context)
        return log

    def choose_weight(self, train: ImageSet, context: FitContext) -> dict[str, Any]:
        """``w`` of eq. 9: the config's, or the candidate with the best pixel AUPR of ``A`` on
        held-out normal images with synthetic defects (fit images when nothing is held out)."""
        c = self.config
        if c.weight is not None:
            self.weight = float(c.weight)
            return {"w": self.weight, "source": "config"}
        pool = context.held_out if context.held_out is not None and len(context.held_out) else train
        source = "held-out normals" if pool is not train else "fit images (in-sample)"
        keep = np.random.default_rng(c.seed).permutation(len(pool))[:c.weight_images]
        images = torch.stack([(pool[int(i)] * 255).round().to(torch.uint8) for i in sorted(keep)])
        defects, _, masks = self.synthetic_set(self.generator(train, context), images,
                                               WEIGHT_KEY_OFFSET, context.progress,
                                               f"{self.name}: defects for w")
        a_nf, a_p = [], []
        with torch.inference_mode():
            for start in range(0, len(defects), c.batch_size):
                nf, raw = self._component_maps(defects[start:start + c.batch_size].float().div_(255))
                a_nf.append(nf.cpu())
                a_p.append(torch.sigmoid(raw[:, 0]).cpu())
        a_nf, a_p = torch.cat(a_nf), torch.cat(a_p)
        grid = {}
        for w in c.weight_grid:
            grid[w] = M.pixel_metrics((a_nf + w * a_p).numpy(), masks.numpy())["pixel_aupr"]
        scored = {w: v for w, v in grid.items() if v is not None}
        if not scored:  # no defect pixel in the draw (all on background): the code's default
            self.weight = 1.0
        else:
            self.weight = float(max(scored, key=lambda w: (scored[w], -w)))
        return {"w": self.weight, "source": source, "images": len(images),
                "synthetic_aupr": {str(w): (None if v is None else round(v, 6)) for w, v in grid.items()}}

    # -- predict ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> Prediction:
        if torch.isnan(self.cnf.n_max):
            raise RuntimeError("fit() or load_state_dict() first")
        c, s = self.config, images.shape[-1]
        x = images.to(self.device)
        a_nf, raw = self._component_maps(x)
        named: dict[str, torch.Tensor] = {}
        recon = None
        if c.head == "cls":
            a_p = torch.sigmoid(raw[:, 0])
            primary = a_nf + self.weight * a_p
            named = {"A": primary, "A_nf": a_nf, "A_p": a_p}
        else:
            primary, recon = a_nf, torch.sigmoid(raw).clamp(0, 1)
            named = {"A_nf": a_nf}
        if self.cnf_pre is not None:
            a_pre = self.cnf_pre.anomaly_map(self.extractor_pre(x), s)
            named["A_nf_pre"] = a_pre
            if c.head == "cls":
                named["A_ns"] = a_pre + self.weight * named["A_p"]
        return Prediction(image_scores=primary.flatten(1).max(1).values, anomaly_maps=primary,
                          named_maps=named, reconstructions=recon)

    # -- checkpoint -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "encoder": self.extractor.state_dict(),
                 "decoder": self.decoder.state_dict(), "weight": float(self.weight)}
        if self.cnf_pre is not None:
            state["cnf_pre"] = self.cnf_pre.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.config.pre_flows and "cnf_pre" in state:  # the untouched encoder is rebuilt
            self.extractor_pre = self._frozen_copy()
            self.cnf_pre = self.build_flows()
            self.cnf_pre.load_state_dict(state["cnf_pre"])
            self.cnf_pre.eval()
        self.extractor.load_state_dict(state["encoder"])
        for p in self.extractor.parameters():
            p.requires_grad_(False)
        self.decoder.load_state_dict(state["decoder"])
        self.decoder.eval()
        self.weight = float(state["weight"])
