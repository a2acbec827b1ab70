"""Conditional normalizing flows on feature maps (CFlow-AD), shared by ``cflow`` and ``cls_cnfs``.

Every position ``k`` of the ``i``-th encoder feature map gives a feature vector ("fiber")
``y_i^k`` with ``C_i`` channels. One flow ``f_i`` per map, conditioned on a 2D sinusoidal
positional encoding ``c_i^k`` of the position (P channels, ``kit.flows.positional_encoding_2d``),
maps it to ``z = f_i(y, c)`` with the change of variables (CLS-CNFs eq. 3)

    l_i,k = log p(y_i^k) = -(||z||^2 + C_i log 2 pi) / 2 + log |det dz/dy|

Training (eq. 2, Alg. 1 step 2) draws random batches of fibers of normal images and minimises
``-log sigmoid(l / C_i)``: the per-dimension likelihood, squashed so that far-off fibers
cannot make the loss diverge. Scoring (eq. 4-8, Alg. 2):

    u_i = max over the TRAINING images of l_i,k / C_i                              (eq. 4)
    n_i,k = exp(l_i,k / C_i - u_i),  N = sum_i upsample(n_i)                        (eq. 5-7)
    A_nf = n_max - N,  n_max = max of N over the training images                    (eq. 8)

The paper writes ``l`` where CFlow-AD's and CLS-CNFs' code use the per-dimension ``l / C``;
we follow the code (the raw ``l`` of a 320-channel map makes ``exp`` underflow). CFlow-AD
takes both maxima over the test set and anomalib's over the batch, so an image's score
depends on the images scored with it; here both come from the training images (CLS-CNFs'
fix for ``u``, and the same fix for ``n_max``), so a score is a function of its image alone.

Shapes: feature maps ``[B, C_i, H_i, W_i]``, fibers ``[N, C_i]``, likelihood maps
``[B, H_i, W_i]``, anomaly maps ``[B, S, S]``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kit.flows import (Flow, SubnetFactory, _zero_init, check_finite_loss, log_likelihood,
                       positional_encoding_2d)


def fibers(fmap: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B * H * W, C]``, image-major, then row-major positions."""
    return fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])


class GridCondition(NamedTuple):
    """The positional condition of ``N`` fibers, as positions and the encoding's two halves.

    ``positional_encoding_2d`` puts a function of the column in its first ``P/2`` channels and
    one of the row in the last ``P/2``, so ``W_c c = W_x pe_x[col] + W_y pe_y[row]``: a subnet
    needs two ``[W, hidden]`` / ``[H, hidden]`` tables per call, not ``P`` inputs per fiber.
    """

    rows: torch.Tensor  # [N] long
    cols: torch.Tensor  # [N] long
    pe_rows: torch.Tensor  # [H, P/2]
    pe_cols: torch.Tensor  # [W, P/2]
    maps: int = 0  # B where the fibers are B whole maps in fibers() order, else 0


class PositionalMLP(nn.Module):
    """CFlow-AD's subnet ``Linear(c + P, hidden) - ReLU - Linear(hidden, c_out)`` on
    ``cat([h, pe(position)])``, computed as ``Linear(h) + table_x[col] + table_y[row]``.

    The same function, initialised from one ``nn.Linear(c + P, hidden)`` as the concatenated
    version is; on Lite0's 40-channel map the condition is 128 of 148 inputs, so this costs a
    third of the multiplications. ``forward(h [N, c], cond: GridCondition) -> [N, c_out]``.
    """

    takes_condition = True

    def __init__(self, c_h: int, cond_channels: int, hidden: int, c_out: int):
        super().__init__()
        full = nn.Linear(c_h + cond_channels, hidden)
        half = cond_channels // 2
        self.inp = nn.Linear(c_h, hidden)
        self.cond_x = nn.Linear(half, hidden, bias=False)
        self.cond_y = nn.Linear(half, hidden, bias=False)
        with torch.no_grad():
            self.inp.weight.copy_(full.weight[:, :c_h])
            self.inp.bias.copy_(full.bias)
            self.cond_x.weight.copy_(full.weight[:, c_h:c_h + half])
            self.cond_y.weight.copy_(full.weight[:, c_h + half:])
        self.out = nn.Linear(hidden, c_out)
        _zero_init(self.out)

    def forward(self, h: torch.Tensor, cond: GridCondition) -> torch.Tensor:
        x = self.inp(h)
        if cond.maps and self._may_cache(x):
            # Scoring whole maps: every map adds the same two [H W, hidden] tables, kept until
            # the weights change (the same values and additions, so the same bits)
            by_col, by_row = self._map_tables(cond)
            x = (x.view(cond.maps, -1, x.shape[1]) + by_col + by_row).view(x.shape)
            return self.out(F.relu(x))
        x = x + self.cond_x(cond.pe_cols).index_select(0, cond.cols)
        x = x + self.cond_y(cond.pe_rows).index_select(0, cond.rows)
        return self.out(F.relu(x))

    @staticmethod
    def _may_cache(x: torch.Tensor) -> bool:
        """Not under autograd (training needs the tables' gradients), autocast (the tables'
        dtype would follow the first call's), or a compiler or tracer, whose graphs should hold
        the operations rather than whatever an earlier eager call left in the cache."""
        return not (torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type)
                    or torch.jit.is_tracing() or torch.compiler.is_compiling())

    def _map_tables(self, cond: GridCondition) -> tuple[torch.Tensor, torch.Tensor]:
        """The column and row terms of one whole map, ``[H W, hidden]`` each, cached per map
        size and device for the current weight tensors and their versions: an optimiser step,
        ``load_state_dict`` or ``.to()`` makes new tables. A write through ``.data`` bumps no
        version and is not seen."""
        hw = cond.pe_rows.shape[0] * cond.pe_cols.shape[0]
        if cond.rows.shape[0] != cond.maps * hw:
            raise ValueError(f"a condition of {cond.maps} whole {cond.pe_rows.shape[0]} x "
                             f"{cond.pe_cols.shape[0]} maps has {cond.rows.shape[0]} fibers")
        weights = (self.cond_x.weight, self.cond_y.weight)
        key = (hw, cond.pe_cols.shape[0], str(cond.rows.device), *(w._version for w in weights))
        cached = self.__dict__.get("_tables")
        if cached is None or cached[0] != key or any(a is not b for a, b in zip(cached[1], weights)):
            tables = (self.cond_x(cond.pe_cols).index_select(0, cond.cols[:hw]),
                      self.cond_y(cond.pe_rows).index_select(0, cond.rows[:hw]))
            # the weights themselves are held, so a freed weight's memory cannot pass for them
            self.__dict__["_tables"] = cached = (key, weights, tables)
        return cached[2]


def subnet_positional(cond_channels: int) -> SubnetFactory:
    """Factory of :class:`PositionalMLP` with CFlow-AD's width ``2 (c + P)``."""
    def make(c_in: int, c_out: int) -> nn.Module:
        return PositionalMLP(c_in - cond_channels, cond_channels, 2 * c_in, c_out)
    return make


def warmup_cosine(step: int, total: int, lr: float, warmup: float = 0.08,
                  floor: float = 1e-3) -> float:
    """CFlow-AD's schedule: a linear warm-up from ``lr/10`` over the first ``warmup`` share of
    the steps, then cosine decay to ``lr * floor``."""
    def cosine(s: float) -> float:
        return lr * floor + (lr - lr * floor) * 0.5 * (1 + math.cos(math.pi * s / max(total, 1)))
    warm = int(round(warmup * total))
    if step < warm:
        return lr / 10 + (cosine(warm) - lr / 10) * step / warm
    return cosine(step)


class FiberFlows(nn.Module):
    """One conditional flow per feature map, with the likelihood normalisers of eq. 4 and 8.

    ``channels``: ``C_i`` of each map. Each flow is ``n_blocks`` one-sided affine couplings
    (``kit.flows.CouplingBlock``, ``two_sided=False``: only one half moves per block, as
    FrEIA's AllInOneBlock in CFlow-AD) with a tanh soft clamp ``clamp``, CFlow-AD's subnet
    ``Linear(c + P, 2 (c + P)) - ReLU - Linear``, and by default the rest of AllInOneBlock as
    CFlow-AD's code sets it: a seeded random rotation of the channels (``permute_soft=True``)
    and a learned per-channel scale and offset (``global_affine_type="SOFTPLUS"``).
    """

    def __init__(self, channels: Sequence[int], n_blocks: int = 8, cond_channels: int = 128,
                 clamp: float = 1.9, seed: int = 0, mixing: str = "orthogonal",
                 global_affine: bool = True):
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.cond_channels = int(cond_channels)
        self.flows = nn.ModuleList(
            Flow.build(c, n_blocks, subnet_positional(cond_channels), clamp=clamp, clamp_kind="tanh",
                       cond_channels=cond_channels, seed=seed + 1000 * i, two_sided=False,
                       mixing=mixing, global_affine=global_affine)
            for i, c in enumerate(self.channels))
        # eq. 4's u_i and eq. 8's n_max; NaN until calibrate() has seen training images
        self.register_buffer("u", torch.full((len(self.channels),), float("nan")))
        self.register_buffer("n_max", torch.tensor(float("nan")))
        self._pe: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- the condition ----------------------------------------------------------------------
    def _tables(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoding's row half ``[H, P/2]`` and column half ``[W, P/2]``."""
        key = (height, width, str(device))
        if key not in self._pe:
            pe = positional_encoding_2d(self.cond_channels, height, width)
            half = self.cond_channels // 2
            self._pe[key] = (pe[half:, :, 0].T.contiguous().to(device),
                             pe[:half, 0, :].T.contiguous().to(device))
        return self._pe[key]

    def condition(self, positions: torch.Tensor, height: int, width: int) -> GridCondition:
        """The condition of fibers at row-major ``positions [N]`` of an ``H x W`` map."""
        pe_rows, pe_cols = self._tables(height, width, positions.device)
        return GridCondition(positions // width, positions % width, pe_rows, pe_cols)

    def map_condition(self, batch: int, height: int, width: int, device: torch.device) -> GridCondition:
        """The condition of every fiber of ``batch`` maps, in :func:`fibers`' order."""
        positions = torch.arange(height * width, device=device).repeat(batch)
        return self.condition(positions, height, width)._replace(maps=batch)

    # -- likelihoods --------------------------------------------------------------------------
    def fiber_loglik(self, level: int, y: torch.Tensor, cond: GridCondition) -> torch.Tensor:
        """Per-dimension log-likelihood ``l / C_i`` ``[N]`` of fibers ``y [N, C_i]``."""
        z, logdet = self.flows[level](y, cond)
        return log_likelihood(z, logdet) / self.channels[level]

    def loglik_maps(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``l_i / C_i`` at every position: one ``[B, H_i, W_i]`` per map ``[B, C_i, H_i, W_i]``."""
        out = []
        for level, fmap in enumerate(features):
            b, c, h, w = fmap.shape
            if c != self.channels[level]:
                raise ValueError(f"feature map {level} has {c} channels, the flow expects "
                                 f"{self.channels[level]}")
            cond = self.map_condition(b, h, w, fmap.device)
            out.append(self.fiber_loglik(level, fibers(fmap.float()), cond).view(b, h, w))
        return out

    def normal_map(self, logliks: Sequence[torch.Tensor], size: int) -> torch.Tensor:
        """``N [B, S, S]`` of eq. 5-7 from :meth:`loglik_maps`' output (needs :meth:`calibrate`)."""
        if torch.isnan(self.u).any():
            raise RuntimeError("calibrate() the flows on training features first")
        total = None
        for level, l in enumerate(logliks):
            n = torch.exp(l - self.u[level])[:, None]
            n = F.interpolate(n, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
            total = n if total is None else total + n
        return total

    def anomaly_map(self, features: Sequence[torch.Tensor], size: int) -> torch.Tensor:
        """``A_nf = n_max - N`` ``[B, S, S]`` (eq. 8): larger = more anomalous."""
        return self.n_max - self.normal_map(self.loglik_maps(features), size)

    @torch.no_grad()
    def calibrate(self, batches: Iterable[list[torch.Tensor]], size: int) -> None:
        """Set ``u`` (eq. 4) and ``n_max`` (eq. 8) from the training images, whose feature maps
        ``batches`` yields (lists of ``[B, C_i, H_i, W_i]``). The likelihood maps are small, so
        they are kept and the flows run once."""
        self.eval()
        kept = [[l.cpu() for l in self.loglik_maps(feats)] for feats in batches]
        self.u.copy_(torch.stack([torch.stack([ls[level].max() for ls in kept]).max()
                                  for level in range(len(self.channels))]).to(self.u))
        n_max = max(float(self.normal_map([l.to(self.u.device) for l in ls], size).max())
                    for ls in kept)
        self.n_max.fill_(n_max)

    # -- training -----------------------------------------------------------------------------
    def fit_fibers(self, features: Sequence[torch.Tensor], epochs: int, lr: float,
                   fiber_batch: int, gen: torch.Generator, progress: bool = True,
                   on_epoch: Callable[[int, float], None] | None = None,
                   desc: str = "cnf") -> dict:
        """Train every flow on the fibers of ``features`` (one ``[N_img, C_i, H_i, W_i]`` per map).

        An epoch visits every fiber of every map once, in a seeded random order, in batches of
        ``fiber_batch`` (eq. 2); Adam with CFlow-AD's warm-up and cosine schedule, one
        optimiser per flow. ``on_epoch(epoch 0.., mean loss over the maps)``.
        """
        device = self.u.device
        # fused: one kernel per step instead of a dozen per tensor (a step is ~20 ms of small ops)
        optimisers = [torch.optim.Adam(f.parameters(), lr=lr, fused=True) for f in self.flows]
        counts = [f.shape[0] * f.shape[2] * f.shape[3] for f in features]
        totals = [epochs * math.ceil(n / fiber_batch) for n in counts]
        steps = [0] * len(self.flows)
        losses: list[float] = []
        t0 = time.perf_counter()
        self.train()
        bar = tqdm(range(epochs), desc=f"{desc}: training flows", disable=not progress, leave=False)
        for epoch in bar:
            epoch_loss = []
            for level, fmap in enumerate(features):
                h, w = fmap.shape[-2:]
                flat = fibers(fmap)  # [N_img * H * W, C] on the CPU
                order = torch.randperm(flat.shape[0], generator=gen)
                total, seen = 0.0, 0
                for idx in order.split(fiber_batch):
                    for group in optimisers[level].param_groups:
                        group["lr"] = warmup_cosine(steps[level], totals[level], lr)
                    y = flat[idx].to(device, torch.float32)
                    cond = self.condition((idx % (h * w)).to(device), h, w)
                    loglik = self.fiber_loglik(level, y, cond)
                    loss = -F.logsigmoid(loglik).mean()
                    check_finite_loss(loss, epoch, lr)
                    optimisers[level].zero_grad(set_to_none=True)
                    loss.backward()
                    optimisers[level].step()
                    steps[level] += 1
                    total += loss.detach().item() * len(idx)
                    seen += len(idx)
                epoch_loss.append(total / seen)
            losses.append(round(sum(epoch_loss) / len(epoch_loss), 6))
            if on_epoch is not None:
                on_epoch(epoch, losses[-1])
        self.eval()
        return {"flow_loss": losses, "flow_epochs": epochs,
                "flow_seconds": round(time.perf_counter() - t0, 3)}
