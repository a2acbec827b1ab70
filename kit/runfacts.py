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


class MemoryWarning(UserWarning):
    """A run (its fit, or its scoring and metrics) is likely to need more memory than this
    machine has available: :func:`memory_warning` says which stage and how much."""


def reference_fit_peak(records: list[dict[str, Any]], method: str, budget: str
                       ) -> dict[str, Any] | None:
    """The committed run (``docs/results/runs.json`` records) of ``method`` at ``budget`` on
    real data with a measured fit peak that says most about a new fit: the newest with the
    default settings (the code that made it is closest to today's), else the newest of any
    settings; None where there is none."""
    measured = [r for r in records if r.get("method") == method and r.get("budget") == budget
                and r.get("data") != "sample" and r.get("fit_peak_rss_mb")]
    default = [r for r in measured if not r.get("overrides")]  # an ablation's default variant too
    return max(default or measured, key=lambda r: r.get("created") or "", default=None)


PROCESS_BASE_MB = 1024.0  # about what a kit process holds before a fit (torch, a backbone)


def _scaled(peak: float, n: int, ref_n: int) -> float:
    """``peak`` MB with its part above :data:`PROCESS_BASE_MB` scaled up by ``n / ref_n``."""
    base = min(peak, PROCESS_BASE_MB)
    return base + (peak - base) * max(1.0, n / ref_n if ref_n else 1.0)


def memory_warning(method: str, budget: str, n_train: int, available_mb: float | None = None,
                   records: list[dict[str, Any]] | None = None, n_test: int | None = None
                   ) -> str | None:
    """What to tell a user before a run that the reference results say will not fit in memory:
    the committed run's fit peak (its part above :data:`PROCESS_BASE_MB` scaled up by
    ``n_train`` over its training images where there are more) and, given ``n_test``, its peak
    while scoring and computing metrics scaled the same way by test images (a full-budget test
    split can need more than the fit), against ``available_mb`` (default: what the operating
    system says is available now). None where it fits or nothing is known."""
    if records is None:
        from kit.report import reference_records

        records = reference_records()
    ref = reference_fit_peak(records, method, budget)
    if ref is None:
        return None
    peak, ref_n = float(ref["fit_peak_rss_mb"]), ref.get("n_train") or 0
    need, stage = _scaled(peak, n_train, ref_n), "fitting"
    score_peak, ref_test = ref.get("score_peak_rss_mb"), ref.get("n_test") or 0
    if n_test is not None and score_peak:
        score_need = _scaled(float(score_peak), n_test, ref_test)
        if score_need > need:
            need, stage = score_need, "scoring and metrics"
    if available_mb is None:
        available_mb = psutil.virtual_memory().available / 2**20
    if need <= available_mb:
        return None
    scoring = (f", scoring {ref_test or 'an unrecorded number of'} test images (with metrics) at "
               f"{float(score_peak) / 1024:.1f} GB" if n_test is not None and score_peak else "")
    return (f"{method} at the {budget} budget may not fit in memory: its reference run "
            f"(docs/results/runs.json, {ref.get('run', 'a run')}) peaked fitting "
            f"{ref_n or 'an unrecorded number of'} training images at {peak / 1024:.1f} GB{scoring}; "
            f"this run has {n_train} training"
            + (f" and {n_test} test" if n_test is not None else "")
            + f" images (about {need / 1024:.1f} GB, {stage}), and {available_mb / 1024:.1f} GB "
            "are available now. If it is killed or swaps, use --budget quick, fewer training "
            "images (max_train_images) or close other programs.")
