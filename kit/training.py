"""The epoch loop shared by the kit's small trained parts (``kit.flows.fit_flow``,
``kit.mapping.fit_mapping``): Adam, seeded batch order, mean loss per epoch, a progress bar and
the epoch callback."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

BatchLoss = Callable[[torch.Tensor, int], torch.Tensor]  # (sample indices, epoch) -> scalar loss


def adam_epochs(module: nn.Module, n: int, batch_loss: BatchLoss, epochs: int, lr: float,
                weight_decay: float, batch_size: int, gen: torch.Generator, progress: bool = True,
                desc: str = "training", label: str = "loss",
                on_epoch: Callable[[int, float], None] | None = None,
                parameters: Iterable[nn.Parameter] | None = None) -> list[float]:
    """Train ``module`` (its ``parameters``) for ``epochs`` passes over ``n`` samples in batches
    of ``batch_size``, drawn in an order from ``gen``; ``batch_loss(indices, epoch)`` gives each
    batch's loss (and may raise on a non-finite one). Returns the sample-weighted mean loss of
    every epoch; the module is left in eval mode."""
    opt = torch.optim.Adam(parameters if parameters is not None else module.parameters(),
                           lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    module.train()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        total, seen = 0.0, 0
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            loss = batch_loss(idx, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        losses.append(total / seen)
        bar.set_postfix({label: f"{losses[-1]:.4f}"})
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    module.eval()
    return losses
