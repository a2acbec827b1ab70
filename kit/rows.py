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


class RowsError(ValueError):
    """Batches that do not fill the rows: out of order, of other parts or shapes, too few."""


Parts = Sequence[torch.Tensor] | Mapping[Hashable, torch.Tensor]


def memory_layout(x: torch.Tensor) -> torch.memory_format:
    """Channels-last where ``x [B, C, H, W]`` is stored so (and not also plainly contiguous)."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if channels_last and not x.is_contiguous():
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
    autograd (the producer's own code, e.g. ``predict``, runs in the caller's grad mode).
    Raises :class:`RowsError` (a ``ValueError``) unless the batches come in row order and fill
    exactly ``n`` rows with the first batch's parts and per-row shapes.
    """
    out: dict[Hashable, torch.Tensor] = {}
    filled = 0
    stream = iter(batches)
    try:
        for first, parts in stream:
            items = dict(parts) if isinstance(parts, Mapping) else dict(enumerate(parts))
            if not items:
                raise RowsError(f"the batch at row {first} has no parts")
            if first != filled:  # in order and without gaps or overlaps: no row left unwritten
                raise RowsError(f"a batch at row {first}, where row {filled} comes next")
            if not out:
                out = {key: torch.empty((n, *p.shape[1:]), dtype=dtype or p.dtype,
                                        memory_format=memory_layout(p) if keep_layout
                                        else torch.contiguous_format)
                       for key, p in items.items()}
            elif items.keys() != out.keys():
                raise RowsError(f"the batch at row {first} has parts {sorted(map(str, items))}, "
                                f"the first had {sorted(map(str, out))}")
            rows = {len(p) for p in items.values()}
            if len(rows) != 1:
                raise RowsError(f"the parts of the batch at row {first} differ in rows: "
                                f"{sorted(rows)}")
            count = rows.pop()
            if first + count > n:
                raise RowsError(f"a batch of {count} rows at row {first} does not fit in {n} rows")
            with torch.no_grad():
                for key, p in items.items():
                    if p.shape[1:] != out[key].shape[1:]:  # copy_ would broadcast it silently
                        raise RowsError(f"part {key!r} of the batch at row {first} has shape "
                                        f"{list(p.shape)}, the first had "
                                        f"{list(out[key].shape[1:])} per row")
                    out[key][first:first + count].copy_(p)
            filled += count
    finally:  # a refused batch closes its producer (a generator: its bar, its last tensors)
        getattr(stream, "close", lambda: None)()
    if out and filled != n:
        raise RowsError(f"the batches filled {filled} rows of {n}")
    return out
