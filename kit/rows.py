"""Results of many batches gathered into tensors allocated once, for all rows.

Appending each batch's result to a list and joining the list at the end holds the result twice
when it is joined (the pieces and the joined copy). At the full budget that doubles the largest
allocation of a stage: the training features a fit keeps, or the maps of every test image that
scoring keeps (four maps of 583 images at 384 px are 1.3 GB). :func:`gather_rows` allocates
each result for all ``n`` rows when the first batch arrives and copies every batch into its
place, so the peak is the result itself.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Mapping, Sequence

import torch

Parts = Sequence[torch.Tensor] | Mapping[Hashable, torch.Tensor]


def memory_layout(x: torch.Tensor) -> torch.memory_format:
    """Channels-last where ``x [B, C, H, W]`` is stored so (and not also plainly contiguous)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def gather_rows(n: int, batches: Iterable[tuple[int, Parts]], dtype: torch.dtype | None = None,
                keep_layout: bool = False) -> dict[Hashable, torch.Tensor]:
    """Every batch's tensors ``[B, ...]`` copied into CPU tensors ``[n, ...]``, one per part.

    ``batches`` yields ``(first_row, parts)``: ``parts`` a list of tensors (keys 0, 1, ...) or
    a dict of them, with the same keys in every batch. Returns ``{key: [n, ...]}`` in the first
    batch's order, ``{}`` when there are no batches. ``dtype``: of every result (default: each
    part's own); ``keep_layout``: allocate channels-last where the first batch's part is (the
    layout ``torch.cat`` of the pieces would give), else contiguous. The copies are outside
    autograd. Raises ``ValueError`` when the batches do not fill exactly ``n`` rows or change
    their keys.
    """
    out: dict[Hashable, torch.Tensor] = {}
    filled = 0
    for first, parts in batches:
        items = dict(parts) if isinstance(parts, Mapping) else dict(enumerate(parts))
        if not out:
            out = {key: torch.empty((n, *p.shape[1:]), dtype=dtype or p.dtype,
                                    memory_format=memory_layout(p) if keep_layout
                                    else torch.contiguous_format)
                   for key, p in items.items()}
        elif items.keys() != out.keys():
            raise ValueError(f"a batch at row {first} has parts {sorted(map(str, items))}, "
                             f"the first had {sorted(map(str, out))}")
        rows = {len(p) for p in items.values()}
        if len(rows) != 1:
            raise ValueError(f"the parts of the batch at row {first} differ in rows: {sorted(rows)}")
        count = rows.pop()
        if first < 0 or first + count > n:
            raise ValueError(f"a batch of {count} rows at row {first} does not fit in {n} rows")
        with torch.no_grad():
            for key, p in items.items():
                out[key][first:first + count].copy_(p)
        filled += count
    if out and filled != n:
        raise ValueError(f"the batches filled {filled} rows of {n}")
    return out
