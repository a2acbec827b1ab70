"""Run a paper's ablation as a set of tagged runs, and gather its results.

Each method's paper lists its ablations (``AnomalyMethod.paper.ablations``, ``kit/papers/``):
named variants, each a set of config overrides and the paper's value. ``run_ablation`` makes
one run per variant (and per seed), tagged ``{"ablation": name, "variant": label, "seed": s}``
in config.json, named
``<runs_root>/<method>-<ablation>-<variant>-<budget>-s<seed>-<dataset fingerprint[:8]>``, so
sweeps on different data (the embedded sample, the full MTD) never overwrite each other.
Existing complete runs made with today's config on the same data are kept, so an interrupted
sweep resumes where it stopped; a run whose stored config differs (the budget changed in the
code, other overrides) is made again. Tables group runs by dataset and budget, never across.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from kit.data import dataset_fingerprint
from kit.method import method_class
from kit.papers import Ablation
from kit.pipeline import run_experiment, run_fingerprint, run_is_current
from kit.runstore import Run, list_runs, safe_run_dir


def find_ablation(method: str, name: str) -> Ablation:
    return method_class(method).paper.ablation(name)


def run_name(method: str, ablation: str, variant: str, budget: str, seed: int,
             fingerprint: str = "") -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", variant).strip("_") or "v"
    return f"{method}-{ablation}-{slug}-{budget}-s{seed}" + (f"-{fingerprint[:8]}" if fingerprint else "")


def fit_or_reuse(method: str, data_root: Path | str, category: str, out: Path | str,
                 budget: str = "quick", seed: int = 0, overrides: dict[str, Any] | None = None,
                 tags: dict[str, Any] | None = None, progress: bool = True,
                 fingerprint: str | None = None) -> Path:
    """``out`` as a run of these settings on this data: kept when it already is one (so a
    re-executed notebook or an interrupted sweep costs nothing), else fitted again in place.
    ``fingerprint``: :func:`kit.data.dataset_fingerprint` of the data, when already known."""
    fingerprint = fingerprint or dataset_fingerprint(data_root, category)
    if not run_is_current(out, method, budget, seed, overrides, fingerprint):
        run_experiment(method, data_root, category, out, budget=budget, seed=seed,
                       overrides=overrides, tags=tags, progress=progress, overwrite=True)
    return Path(out)


def run_ablation(method: str, name: str, data_root: Path | str, category: str, runs_root: Path | str,
                 budget: str = "quick", seeds: tuple[int, ...] = (0,), variants: list[str] | None = None,
                 extra_overrides: dict[str, Any] | None = None, progress: bool = True,
                 on_run: Callable[[str, Path], None] | None = None) -> list[Path]:
    """Make (or reuse) one run per variant and seed; returns the run folders."""
    ablation = find_ablation(method, name)
    chosen = [v for v in ablation.variants if variants is None or v.label in variants]
    fingerprint = dataset_fingerprint(data_root, category)
    paths = []
    for variant in chosen:
        for seed in seeds:
            out = safe_run_dir(runs_root, run_name(method, name, variant.label, budget, seed,
                                                   fingerprint))
            overrides = {**(extra_overrides or {}), **variant.overrides}
            fit_or_reuse(method, data_root, category, out, budget=budget, seed=seed,
                         overrides=overrides, tags={"ablation": name, "variant": variant.label},
                         progress=progress, fingerprint=fingerprint)
            if on_run:
                on_run(variant.label, out)
            paths.append(out)
    return paths


def ablation_runs(runs: list[Run], method: str, name: str) -> dict[str, list[Run]]:
    """Runs of ``method`` tagged with ablation ``name``, grouped by variant label."""
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        tags = run.config.get("tags") or {}
        if run.method == method and tags.get("ablation") == name:
            grouped.setdefault(tags.get("variant"), []).append(run)
    return grouped


def ablation_table(runs_root: Path | str, method: str, name: str, *, data_root: Path | str,
                   category: str, budget: str) -> list[dict[str, Any]]:
    """One row per variant: the paper's value, our mean and spread over seeds, run count.

    Only runs on ``data_root/category`` (same dataset fingerprint) with ``budget`` count: a
    mean over runs on the embedded sample and on the full data would be neither's result.
    """
    ablation = find_ablation(method, name)
    fingerprint = dataset_fingerprint(data_root, category)
    runs, _ = list_runs(runs_root)
    runs = [r for r in runs if run_fingerprint(r) == fingerprint and r.config.get("budget") == budget]
    grouped = ablation_runs(runs, method, name)
    rows = []
    for variant in ablation.variants:
        values = [r.metrics.get(ablation.metric) for r in grouped.get(variant.label, [])]
        values = [v for v in values if v is not None]
        mean = sum(values) / len(values) if values else None
        spread = (max(values) - min(values)) if len(values) > 1 else None
        rows.append({"variant": variant.label, "paper": variant.paper_value, "ours": mean,
                     "spread": spread, "runs": len(values), "overrides": variant.overrides})
    return rows
