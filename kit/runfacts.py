"""Facts about a run that a comparison of methods needs beside its metrics: peak memory of
each stage, parameter counts and the model's size. ``metrics.json`` stores them."""

from __future__ import annotations

import threading
from typing import Any

import psutil
import torch

# metrics.json keys that measure this machine, not the method: they differ between two runs
# of the same seed (determinism checks compare everything else)
MEASURED = ("fit_seconds", "infer_ms_per_image", "fit_peak_rss_mb", "score_peak_rss_mb")


class PeakRSS:
    """Context manager: the largest resident set size (MiB) of this process while inside.

    A thread samples every ``interval_s`` (the operating system keeps only the lifetime peak,
    which would give every stage after the largest the same number). Short spikes between two
    samples can be missed, so the value is a lower bound, close for stages of seconds or more.
    """

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = self._process.memory_info().rss / 2**20
        self.peak_mb = max(self.peak_mb, rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "PeakRSS":
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.peak_mb = round(self.peak_mb, 1)


def _unique_tensors(tensors) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out.append(t)
    return out


def _state_tensors(state: Any):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from _state_tensors(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from _state_tensors(value)


def model_facts(modules: list[torch.nn.Module], state: dict[str, Any]) -> dict[str, Any]:
    """Parameter counts of ``modules`` and the model's size in MB.

    ``trainable_params``: parameters that require gradients (a flow's weights; zero for
    PaDiM, whose Gaussians are statistics, not parameters). ``total_params``: every parameter,
    the frozen backbone's included. ``model_mb``: bytes of every parameter, buffer and learned
    tensor in the method's state (PaDiM's covariance factors), each counted once.
    ``state_mb``: the learned state alone, what the checkpoint stores.
    """
    params = _unique_tensors(p for m in modules for p in m.parameters())
    buffers = _unique_tensors(b for m in modules for b in m.buffers())
    learned = _unique_tensors(_state_tensors(state))
    counted = {t.data_ptr() for t in params + buffers}
    extra = [t for t in learned if t.data_ptr() not in counted]

    def nbytes(ts: list[torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in ts)

    return {"trainable_params": int(sum(p.numel() for p in params if p.requires_grad)),
            "total_params": int(sum(p.numel() for p in params)),
            "model_mb": round((nbytes(params) + nbytes(buffers) + nbytes(extra)) / 1e6, 3),
            "state_mb": round(nbytes(learned) / 1e6, 3)}
