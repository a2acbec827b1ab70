"""Fold a frozen network's BatchNorm layers into the convolutions that feed them.

In eval mode a BatchNorm is a fixed per-channel affine map, so the convolution before it can
absorb it: with ``s = gamma / sqrt(running_var + eps)``,

    BN(W * x + b) = (s W) * x + (s (b - running_mean) + beta)

On a 2-core CPU the separate BatchNorm pass costs about a third of an EfficientNet-Lite forward
(``benchmarks/bench_fold.py``); folded, the network computes the same function to float
rounding (about 1e-6 relative) in fewer memory passes. ONNX Runtime does the same to the
exported graph, which is much of why it ran the bare backbone faster than PyTorch.

Only frozen networks are folded (a trainable encoder's BatchNorm affine weights are learned
separately). Which convolution feeds which BatchNorm is found by running the network once and
following the tensors, not from module names; a pair is folded only when the BatchNorm's input
is a convolution's output that nothing else reads. The folded network is checked against the
original on the same input, and left as it was when the two disagree.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["fold_batchnorm"]

# a folded forward agrees with the original to float rounding; anything larger is a wrong fold
_MAX_RELATIVE_ERROR = 1e-4


class _ActOnly(nn.Module):
    """What remains of timm's ``BatchNormAct2d`` once its normalisation is folded away: its
    dropout (identity in eval mode) and activation."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.drop = bn.drop
        self.act = bn.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _conv_bn_pairs(body: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv name, bn name)`` for every eval-mode ``BatchNorm2d`` whose input, in one forward
    of ``example``, is the output of a ``Conv2d`` that no other module reads."""
    names = {module: name for name, module in body.named_modules()}
    produced_by: dict[int, str] = {}  # id(conv output) -> conv name
    readers: dict[int, list[str]] = {}  # id(tensor) -> names of the modules that read it
    keep: list[torch.Tensor] = []  # hold every tensor, so an id is never reused while tracing

    def before(module, inputs):
        for x in inputs:
            if isinstance(x, torch.Tensor):
                readers.setdefault(id(x), []).append(names[module])
                keep.append(x)

    def after(module, inputs, output):
        if isinstance(module, nn.Conv2d) and isinstance(output, torch.Tensor):
            produced_by[id(output)] = names[module]
            keep.append(output)

    leaves = [m for m in body.modules() if not list(m.children()) or isinstance(m, nn.BatchNorm2d)]
    handles = [h for m in leaves for h in (m.register_forward_pre_hook(before),
                                           m.register_forward_hook(after))]
    try:
        with torch.no_grad():
            body(example)
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for tensor_id, conv in produced_by.items():
        read = readers.get(tensor_id, [])
        if len(read) == 1:
            bn = dict(body.named_modules())[read[0]]
            if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and not bn.training:
                pairs.append((conv, read[0]))
    return pairs


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        folded_bias = (bias - bn.running_mean) * scale
        if bn.bias is not None:
            folded_bias = folded_bias + bn.bias
        conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
        conv.bias = nn.Parameter(folded_bias.to(conv.weight.dtype),
                                 requires_grad=conv.weight.requires_grad)


def _replace(body: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = body.get_submodule(parent_name) if parent_name else body
    setattr(parent, child, new)


def fold_batchnorm(body: nn.Module, call, example: torch.Tensor) -> int:
    """Fold ``body``'s BatchNorms into their convolutions in place; returns how many.

    ``call(x)``: how the network is run (its output a tensor or a list of tensors);
    ``example``: an input for it ``[B, 3, H, W]``. ``body`` must be in eval mode. Returns 0 and
    leaves ``body`` unchanged when the folded network's output differs from the original's by
    more than float rounding.
    """
    if body.training:
        raise ValueError("fold_batchnorm needs a network in eval mode")
    pairs = _conv_bn_pairs(_Called(body, call), example)
    if not pairs:
        return 0
    original = copy.deepcopy(body)
    modules = dict(_Called(body, call).named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        _fold_pair(conv, bn)
        act = _ActOnly(bn) if hasattr(bn, "act") and hasattr(bn, "drop") else nn.Identity()
        _replace(body, bn_name.removeprefix("body."), act.train(bn.training))
    with torch.no_grad():
        want = _flat(call(original, example))
        got = _flat(call(body, example))
    error = max(float((g - w).abs().max() / w.abs().max().clamp_min(1e-12))
                for g, w in zip(got, want))
    if len(got) != len(want) or error > _MAX_RELATIVE_ERROR:
        for name, module in original.named_children():
            setattr(body, name, module)
        return 0
    return len(pairs)


class _Called(nn.Module):
    """``body`` run through ``call`` as a module, so hooks see the whole forward."""

    def __init__(self, body: nn.Module, call):
        super().__init__()
        self.body = body
        self._call = call

    def forward(self, x):
        return self._call(self.body, x)


def _flat(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)
