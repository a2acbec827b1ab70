"""Normalizing-flow building blocks shared by DifferNet, CFlow-AD / CLS-CNFs and NF-BMR.

A normalizing flow is an invertible map ``f: y -> z`` whose Jacobian determinant is cheap.
With ``z ~ N(0, I)`` the change of variables (DifferNet eq. 3-4) gives

    log p_Y(y) = log p_Z(f(y)) + log |det df/dy|

Every block here is a Real-NVP affine coupling (DifferNet eq. 1). The channels are split
into ``(y1, y2)``; a subnet of ``y1`` predicts a log-scale ``s1`` and a shift ``t1`` for
``y2``, then (two-sided) a subnet of the *new* ``y2`` predicts ``s2, t2`` for ``y1``:

    y2' = y2 * exp(s1(y1)) + t1(y1)
    y1' = y1 * exp(s2(y2')) + t2(y2')

The Jacobian is triangular, so ``log |det| = sum(s1) + sum(s2)``, and inverting a block only
runs the subnets forwards; the subnets never need to be invertible themselves. A fixed
random permutation before each coupling moves every channel through both halves over
the stack. ``s`` goes through a soft clamp (eq. 2) that keeps ``exp(s)`` inside
``(e^-alpha, e^alpha)``, because a few huge scales are enough to make training diverge.

Shapes: a block acts on dimension 1 ("channels") of input of any rank. The same code
therefore handles DifferNet's vectors ``[B, D]``, CFlow's fibers ``[N, C]`` with a
condition ``[N, P]``, and NF-BMR's feature maps ``[B, C, H, W]`` with conv subnets. Each
subnet gets the condition concatenated to its input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

# A factory builds one subnet: (input channels, output channels) -> module.
SubnetFactory = Callable[[int, int], nn.Module]

CLAMP_KINDS = ("atan", "tanh")
MIXINGS = ("permutation", "orthogonal")


def soft_clamp(s: torch.Tensor, alpha: float, kind: str = "atan") -> torch.Tensor:
    """Squash log-scales ``s`` (any shape) smoothly into ``(-alpha, alpha)``; same shape out.

    ``"atan"``: ``(2 alpha / pi) * atan(s / alpha)``. This is DifferNet eq. 2; its slope at
    0 is ``2/pi``, not 1, so near 0 it is a scaled identity.
    ``"tanh"``: ``alpha * tanh(s / alpha)``, the CFlow-AD-style clamp, with slope 1 at 0.
    Both are odd, increasing and smooth, so gradients still flow where the clamp bites.
    """
    if kind == "atan":
        return (2.0 * alpha / math.pi) * torch.atan(s / alpha)
    if kind == "tanh":
        return alpha * torch.tanh(s / alpha)
    raise ValueError(f"clamp_kind must be one of {CLAMP_KINDS}, got {kind!r}")


def _zero_init(layer: nn.Module) -> None:
    # We zero the last layer, so every block starts as the exact identity (s = 0, t = 0,
    # logdet = 0) and a deep stack cannot blow its inputs up at step 0. Training still
    # starts: this layer's weight gradient is (upstream grad x hidden activations), and
    # the activations are not zero; once the layer has moved, earlier layers get gradient.
    # Zero beats "small random" because the starting point is exact and the same every run.
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


def subnet_fc(hidden: int | None = None, depth: int = 1) -> SubnetFactory:
    """Factory for MLP subnets ``[N, c_in] -> [N, c_out]``: (Linear-ReLU) x depth, then Linear.

    DifferNet: ``hidden=2048, depth=3``. CFlow-AD: ``depth=1`` with ``hidden=None``, which
    gives ``2 * c_in``, the width its public code uses (c_in includes the condition).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")

    def make(c_in: int, c_out: int) -> nn.Module:
        width = hidden if hidden is not None else 2 * c_in
        layers: list[nn.Module] = []
        c = c_in
        for _ in range(depth):
            layers += [nn.Linear(c, width), nn.ReLU()]
            c = width
        last = nn.Linear(c, c_out)
        _zero_init(last)
        return nn.Sequential(*layers, last)

    return make


def subnet_conv(hidden: int, kernel: int = 3, depth: int = 1) -> SubnetFactory:
    """Factory for conv subnets ``[N, c_in, H, W] -> [N, c_out, H, W]``.

    The layers are (Conv-ReLU) x depth, then Conv, all ``kernel x kernel`` with "same"
    padding so that ``H, W`` do not change. NF-BMR uses ``hidden=1024, kernel=3``.
    """
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be odd to keep H, W ('same' padding), got {kernel}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")

    def make(c_in: int, c_out: int) -> nn.Module:
        layers: list[nn.Module] = []
        c = c_in
        for _ in range(depth):
            layers += [nn.Conv2d(c, hidden, kernel, padding=kernel // 2), nn.ReLU()]
            c = hidden
        last = nn.Conv2d(c, c_out, kernel, padding=kernel // 2)
        _zero_init(last)
        return nn.Sequential(*layers, last)

    return make


class CouplingBlock(nn.Module):
    """A fixed channel permutation followed by an affine coupling (DifferNet eq. 1).

    ``forward(x [N, C, ...], cond [N or 1, P, ...] | None) -> (y [N, C, ...], logdet [N])``.
    ``inverse(y, cond) -> x`` undoes it exactly. The condition has the same rank as ``x``;
    its batch and spatial dims may be 1 and are broadcast to ``x``'s (for example, one
    positional encoding ``[1, P, H, W]`` serves the whole batch).

    ``channels`` splits into ``c1 = C // 2`` and ``c2 = C - C // 2``, so odd C works.
    ``two_sided=False`` transforms only ``y2`` (CFlow-AD's blocks); the permutations of
    the other blocks then decide which channels are transformed.
    ``permute_seed=None`` means no permutation. The permutation is a buffer, so it is
    saved and loaded with the weights: a restored flow is the same function.
    ``mixing="orthogonal"`` replaces the permutation by a fixed seeded random rotation of the
    channels (FrEIA's AllInOneBlock with ``permute_soft=True``, as CFlow-AD's code builds it):
    every block then mixes all channels, still with ``|det| = 1``.
    ``global_affine=True`` ends the block with a learned per-channel scale and offset
    (AllInOneBlock's "global affine", an ActNorm): ``y * 0.2 softplus(a / 2) + b``, starting at
    scale 1, with ``log |det| += sum(log scale)`` per position.

    A subnet with ``takes_condition = True`` receives ``(h, cond)`` and the condition as the
    caller gave it (any object, unchecked), instead of ``cat([h, cond])``: CFlow-AD's positional
    condition is then a pair of small lookup tables rather than P dense channels per fiber
    (``kit/cnf.py``), the same function at a fraction of the cost.
    """

    def __init__(self, channels: int, subnet_factory: SubnetFactory, clamp: float = 3.0,
                 clamp_kind: str = "atan", cond_channels: int = 0, two_sided: bool = True,
                 permute_seed: int | None = None, mixing: str = "permutation",
                 global_affine: bool = False):
        super().__init__()
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
        if channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {channels}")
        if clamp_kind not in CLAMP_KINDS:
            raise ValueError(f"clamp_kind must be one of {CLAMP_KINDS}, got {clamp_kind!r}")
        self.channels, self.cond_channels = channels, cond_channels
        self.clamp, self.clamp_kind, self.two_sided = clamp, clamp_kind, two_sided
        self.c1 = channels // 2
        self.c2 = channels - self.c1
        # One subnet per side outputs s and t together (2 x the channels it transforms).
        self.subnet1 = subnet_factory(self.c1 + cond_channels, 2 * self.c2)
        self.subnet2 = subnet_factory(self.c2 + cond_channels, 2 * self.c1) if two_sided else None
        self.subnet_conditions = bool(getattr(self.subnet1, "takes_condition", False))
        if permute_seed is None:
            perm = torch.arange(channels)
        else:
            # A private generator, so the permutation depends on the seed alone.
            perm = torch.randperm(channels, generator=torch.Generator().manual_seed(permute_seed))
        self.register_buffer("perm", perm)
        self.mixing = mixing
        if mixing == "orthogonal":
            gen = torch.Generator().manual_seed(10_007 + (permute_seed or 0))
            q, r = torch.linalg.qr(torch.randn(channels, channels, generator=gen, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r))  # the QR of a Gaussian, signs fixed: Haar-uniform
            self.register_buffer("rotation", q.float())
        self.global_affine = global_affine
        if global_affine:
            # raw value whose activation 0.2 softplus(a / 2) is exactly 1 (AllInOneBlock's init)
            self.affine_scale = nn.Parameter(torch.full((channels,), 2 * math.log(math.exp(5.0) - 1)))
            self.affine_offset = nn.Parameter(torch.zeros(channels))

    def _condition(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor | None:
        """Check ``cond`` against how the block was built; broadcast it to ``[N, P, *x.shape[2:]]``."""
        if self.subnet_conditions:  # the subnet reads and checks the condition itself
            return cond
        if self.cond_channels == 0:
            if cond is not None:
                raise ValueError("this block was built without a condition (cond_channels=0)")
            return None
        if cond is None:
            raise ValueError(f"this block needs a condition with {self.cond_channels} channels")
        if cond.dim() != x.dim() or cond.shape[1] != self.cond_channels:
            raise ValueError(f"condition shape {tuple(cond.shape)} does not fit input "
                             f"{tuple(x.shape)} with {self.cond_channels} condition channels")
        return cond.expand(x.shape[0], -1, *x.shape[2:])

    def _scale_shift(self, subnet: nn.Module, h: torch.Tensor, cond: torch.Tensor | None):
        """One subnet pass on ``h`` (+ condition), split into clamped log-scale ``s`` and shift ``t``."""
        if self.subnet_conditions:
            out = subnet(h, cond)
        else:
            out = subnet(h if cond is None else torch.cat([h, cond], dim=1))
        s, t = out.chunk(2, dim=1)
        return soft_clamp(s, self.clamp, self.clamp_kind), t

    def _rotate(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """``matrix [C, C]`` applied to the channels (dim 1) of ``x`` of any rank."""
        if x.dim() == 2:
            return x @ matrix.T
        return torch.einsum("dc,nc...->nd...", matrix, x)

    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return 0.2 * F.softplus(0.5 * self.affine_scale), self.affine_offset

    def _channel_view(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return v.view(1, -1, *([1] * (x.dim() - 2)))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None,
                per_position: bool = False):
        """``(y, logdet)``: ``logdet [N]``, or with ``per_position=True`` ``[N, *x.shape[2:]]``,
        each position's share (its log-scales summed over channels). A coupling's Jacobian is
        triangular however wide the subnets look, so the shares add up to the whole ``logdet``."""
        cond = self._condition(x, cond)
        if self.mixing == "orthogonal":
            x = self._rotate(x, self.rotation)  # a rotation has |det| = 1: no logdet term
        else:
            x = x.index_select(1, self.perm)  # nor has a permutation
        y1, y2 = x[:, :self.c1], x[:, self.c1:]
        s1, t1 = self._scale_shift(self.subnet1, y1, cond)
        y2 = y2 * torch.exp(s1) + t1
        logdet = s1.sum(1)  # [N, *spatial]
        if self.two_sided:
            s2, t2 = self._scale_shift(self.subnet2, y2, cond)  # reads the *new* y2 (eq. 1)
            y1 = y1 * torch.exp(s2) + t2
            logdet = logdet + s2.sum(1)
        y = torch.cat([y1, y2], dim=1)
        if self.global_affine:
            scale, offset = self._affine()
            y = y * self._channel_view(scale, y) + self._channel_view(offset, y)
            logdet = logdet + torch.log(scale).sum()  # every position's share
        if not per_position:
            logdet = logdet.flatten(1).sum(1) if logdet.dim() > 1 else logdet
        return y, logdet

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        cond = self._condition(y, cond)
        if self.global_affine:
            scale, offset = self._affine()
            y = (y - self._channel_view(offset, y)) / self._channel_view(scale, y)
        y1, y2 = y[:, :self.c1], y[:, self.c1:]
        # Reverse order: y2' is known, so s2, t2 can be recomputed and y1 recovered first.
        if self.two_sided:
            s2, t2 = self._scale_shift(self.subnet2, y2, cond)
            y1 = (y1 - t2) * torch.exp(-s2)
        s1, t1 = self._scale_shift(self.subnet1, y1, cond)
        y2 = (y2 - t1) * torch.exp(-s1)
        x = torch.cat([y1, y2], dim=1)
        if self.mixing == "orthogonal":
            # the inverse of the stored (rounded) matrix, not its transpose: exact in any dtype
            return self._rotate(x, torch.linalg.inv(self.rotation))
        return x.index_select(1, torch.argsort(self.perm))


class Flow(nn.Module):
    """A chain of coupling blocks: ``forward(x, cond) -> (z, logdet [N])``, ``inverse(z, cond) -> x``.

    ``x`` and ``z`` have the same shape (``[N, C]`` or ``[N, C, H, W]``). Every block gets
    the same condition. ``logdet`` is the sum of the blocks' log-determinants.
    """

    def __init__(self, blocks: Iterable[CouplingBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    @classmethod
    def build(cls, channels: int, n_blocks: int, subnet_factory: SubnetFactory,
              clamp: float = 3.0, clamp_kind: str = "atan", cond_channels: int = 0,
              seed: int = 0, two_sided: bool = True, mixing: str = "permutation",
              global_affine: bool = False) -> Flow:
        """``n_blocks`` blocks with permutation seeds ``seed, seed + 1, ...``.

        The subnet weights are drawn inside a forked RNG seeded with ``seed``, so a build
        with a given seed is always the same, and the caller's global RNG is left alone.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            blocks = [CouplingBlock(channels, subnet_factory, clamp, clamp_kind, cond_channels,
                                    two_sided, permute_seed=seed + i, mixing=mixing,
                                    global_affine=global_affine) for i in range(n_blocks)]
        return cls(blocks)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None,
                per_position: bool = False):
        """``(z, logdet)``; ``per_position=True``: ``logdet [N, *x.shape[2:]]`` per position."""
        logdet = x.new_zeros(x.shape[0], *(x.shape[2:] if per_position else ()))
        for block in self.blocks:
            x, block_logdet = block(x, cond, per_position)
            logdet = logdet + block_logdet
        return x, logdet

    def inverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        for block in reversed(self.blocks):
            z = block.inverse(z, cond)
        return z


def nll(z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    """DifferNet eq. 4 per sample: ``0.5 * ||z||^2 - logdet`` for ``z [N, ...]``, ``logdet [N]`` -> ``[N]``.

    This leaves out the constant ``0.5 * D * log(2 pi)`` of the Gaussian density. A constant
    changes neither gradients nor score rankings, so it is the usual training loss and
    anomaly score. DifferNet's code trains on ``nll(z, logdet).mean() / D``; dividing by D
    keeps the loss scale, and so the learning rate, independent of the feature size.
    """
    return 0.5 * z.pow(2).flatten(1).sum(1) - logdet


class FlowDivergedError(ValueError):
    """Training produced a loss that is not finite; the message suggests what to change."""


def check_finite_loss(loss: torch.Tensor, epoch: int, lr: float) -> None:
    """Stop training at the first NaN or infinite loss, with advice, instead of finishing
    the epochs and failing much later on NaN scores. ``loss`` is a scalar tensor."""
    if not torch.isfinite(loss):
        raise FlowDivergedError(
            f"the flow diverged in epoch {epoch + 1}: the training loss is {loss.item()}. "
            f"Lower the learning rate (now lr={lr:g}; try --set lr={lr / 10:g}), or standardise "
            "the features (--set standardize=true) where the method has that switch")


def log_likelihood(z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    """The exact ``log p_Y(y) = -nll - 0.5 * D * log(2 pi)`` per sample, ``[N]``, with ``D = z[0].numel()``.

    CFlow-AD's ``logp`` is this quantity, computed per fiber (``D = C``); its loss is
    ``-logsigmoid(logp / C)``.
    """
    d = z[0].numel()
    return -nll(z, logdet) - 0.5 * d * math.log(2.0 * math.pi)


def positional_encoding_2d(channels: int, height: int, width: int,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal 2D positional encoding ``[P, H, W]`` (CFlow-AD's condition, ``P = channels``).

    The first ``P/2`` channels encode the column x and the last ``P/2`` the row y. Within
    each half, the channels alternate sin and cos of ``pos * 10000^(-2k / (P/2))``, so every
    frequency needs a pair. That is why ``P % 4 == 0`` is required.
    """
    if channels % 4 != 0:
        raise ValueError(f"positional encoding needs channels divisible by 4, got {channels}")
    half = channels // 2
    freq = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * (-math.log(10000.0) / half))
    angle_x = torch.arange(width, dtype=torch.float64)[:, None] * freq  # [W, P/4]
    angle_y = torch.arange(height, dtype=torch.float64)[:, None] * freq  # [H, P/4]
    pe = torch.zeros(channels, height, width, dtype=torch.float64)
    pe[0:half:2] = torch.sin(angle_x).T[:, None, :]  # [P/4, 1, W]: the same for every row
    pe[1:half:2] = torch.cos(angle_x).T[:, None, :]
    pe[half::2] = torch.sin(angle_y).T[:, :, None]  # [P/4, H, 1]: the same for every column
    pe[half + 1::2] = torch.cos(angle_y).T[:, :, None]
    return pe.to(dtype)


def fit_flow(flow: Flow, data: torch.Tensor, epochs: int, lr: float, weight_decay: float,
             batch_size: int, gen: torch.Generator, device: torch.device, progress: bool = True,
             desc: str = "flow", on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train an unconditional ``flow`` by maximum likelihood on ``data [N, ...]`` (CPU).

    Adam; batches of ``batch_size`` in a seeded order; loss ``mean(nll) / D`` with ``D`` the
    size of one sample (DifferNet's scaling, which keeps the learning rate independent of the
    feature size). Returns the mean loss of every epoch; stops at a non-finite one.
    """
    from kit.training import adam_epochs

    d = data[0].numel()

    def batch_loss(idx: torch.Tensor, epoch: int) -> torch.Tensor:
        z, logdet = flow(data[idx].to(device))
        loss = nll(z, logdet).mean() / d
        check_finite_loss(loss, epoch, lr)
        return loss

    return adam_epochs(flow, data.shape[0], batch_loss, epochs, lr, weight_decay, batch_size, gen,
                       progress, desc, "nll", on_epoch)
