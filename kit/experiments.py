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

import json
import re
from pathlib import Path
from typing import Any, Callable

from kit.data import dataset_fingerprint
from kit.method import method_class
from kit.papers import Ablation, AblationVariant
from kit.pipeline import (RunTarget, fit_settings, run_experiments, run_fingerprint,
                          run_is_current)
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
    return fit_or_reuse_shared(method, data_root, category,
                               [RunTarget(out, dict(overrides or {}), dict(tags or {}))],
                               budget, seed, progress, fingerprint)[0]


def fit_or_reuse_shared(method: str, data_root: Path | str, category: str,
                        targets: list[RunTarget], budget: str = "quick", seed: int = 0,
                        progress: bool = True, fingerprint: str | None = None,
                        on_written: Callable[[Path], None] | None = None) -> list[Path]:
    """:func:`fit_or_reuse` of runs whose settings differ only in scoring (equal
    :func:`kit.pipeline.fit_settings`): the runs that are not current share one fit."""
    fingerprint = fingerprint or dataset_fingerprint(data_root, category)
    stale = [t for t in targets
             if not run_is_current(t.out_dir, method, budget, seed, t.overrides, fingerprint)]
    run_experiments(method, data_root, category, stale, budget=budget, seed=seed,
                    progress=progress, overwrite=True, on_written=on_written)
    return [Path(t.out_dir) for t in targets]


def shared_fit_groups(method: str, budget: str, seed: int,
                      overrides: list[dict[str, Any]]) -> list[list[int]]:
    """Indices of ``overrides`` grouped by :func:`kit.pipeline.fit_settings` (in order):
    each group can share one fit. Overrides the method refuses form a group of their own, so
    their error is raised by their own fit (the grid reports it and goes on with the others)."""
    groups: dict[str, list[int]] = {}
    for i, o in enumerate(overrides):
        try:
            key = fit_settings(method, budget, seed, o)
        except Exception:  # noqa: BLE001 - raised again by this run's own fit
            key = f"refused: {i}"
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def is_plain_variant(variant: AblationVariant) -> bool:
    """A variant that is the method as configured: no overrides, the primary map, its own run
    (the grid's and the report's one rule for "the method's default run")."""
    return not variant.overrides and variant.map is None and variant.source is None


def variant_siblings(ablation: Ablation) -> dict[str, list[str]]:
    """``{label: every label of its shared-run group}``: variants that are maps of one model."""
    siblings: dict[str, list[str]] = {}
    for group in variant_groups([v for v in ablation.variants if v.source is None]):
        for v in group:
            siblings[v.label] = [g.label for g in group]
    return siblings


def variant_groups(variants: list[AblationVariant]) -> list[list[AblationVariant]]:
    """Variants with equal overrides, together (in order): maps of one model share one run."""
    groups: dict[str, list[AblationVariant]] = {}
    for v in variants:
        groups.setdefault(json.dumps(v.overrides, sort_keys=True, default=str), []).append(v)
    return list(groups.values())


def variant_tags(name: str, group: list[AblationVariant]) -> dict[str, Any]:
    """A run's tags for the variants it serves: the first names the run, all are listed."""
    tags: dict[str, Any] = {"ablation": name, "variant": group[0].label}
    if len(group) > 1:
        tags["variants"] = [v.label for v in group]
    return tags


def run_labels(run: Run) -> list[str]:
    """The variant labels a tagged run serves (``tags["variants"]``, else ``tags["variant"]``)."""
    tags = run.config.get("tags") or {}
    labels = tags.get("variants") or [tags.get("variant")]
    if isinstance(labels, str):  # a hand-written --tag variants=a,b
        labels = labels.split(",")
    return [str(label) for label in labels if label is not None]


def run_ablation(method: str, name: str, data_root: Path | str, category: str, runs_root: Path | str,
                 budget: str = "quick", seeds: tuple[int, ...] = (0,), variants: list[str] | None = None,
                 extra_overrides: dict[str, Any] | None = None, progress: bool = True,
                 on_run: Callable[[str, Path], None] | None = None,
                 on_failure: Callable[[str, Path, Exception], None] | None = None) -> list[Path]:
    """Make (or reuse) one run per distinct set of overrides and seed; returns the run folders.

    Variants that differ only in the map they read (``AblationVariant.map``) share a run.
    A run that fails raises, unless ``on_failure`` is given: it is then told (the variant's
    label, the run folder, the error) and the other variants still run; the folders returned
    are the runs made."""
    ablation = find_ablation(method, name)
    chosen = [v for v in ablation.variants if variants is None or v.label in variants]
    fingerprint = dataset_fingerprint(data_root, category)
    paths = []
    sourced: dict[str, list[str]] = {}  # variants read from another ablation's runs
    for v in chosen:
        if v.source is not None:
            sourced.setdefault(v.source[0], []).append(v.source[1])
    for other, labels in sourced.items():
        paths += run_ablation(method, other, data_root, category, runs_root, budget, seeds,
                              sorted(set(labels)), extra_overrides, progress, on_run, on_failure)
    # groups over every variant of the ablation, so a run made for one of them is tagged with
    # all it serves (``--variants n=2`` also makes Table 5's NF, a map of the same run)
    wanted = {v.label for v in chosen}
    groups = [g for g in variant_groups([v for v in ablation.variants if v.source is None])
              if any(v.label in wanted for v in g)]
    made: dict[tuple[int, int], Path] = {}  # (group, seed) -> run folder
    for seed in seeds:
        targets = [RunTarget(safe_run_dir(runs_root, run_name(method, name, group[0].label,
                                                              budget, seed, fingerprint)),
                             {**(extra_overrides or {}), **group[0].overrides},
                             variant_tags(name, group))
                   for group in groups]
        # groups whose settings differ only in scoring (Table 3 D-G) share one fit
        for shared in shared_fit_groups(method, budget, seed, [t.overrides for t in targets]):
            try:
                fit_or_reuse_shared(method, data_root, category, [targets[i] for i in shared],
                                    budget, seed, progress, fingerprint)
            except Exception as error:
                if on_failure is None:
                    raise
                for i in shared:
                    on_failure(groups[i][0].label, Path(targets[i].out_dir), error)
                continue
            for i in shared:
                if on_run:
                    on_run(groups[i][0].label, Path(targets[i].out_dir))
                made[i, seed] = Path(targets[i].out_dir)
    return paths + [made[i, seed] for i in range(len(groups)) for seed in seeds
                    if (i, seed) in made]


def ablation_runs(runs: list[Run], method: str, name: str) -> dict[str, list[Run]]:
    """Runs of ``method`` tagged with ablation ``name``, grouped by variant label (a run that
    serves several variants is in each of their lists)."""
    ablation = find_ablation(method, name)
    siblings = variant_siblings(ablation)  # label -> every label of its shared-run group
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        tags = run.config.get("tags") or {}
        if run.method == method and tags.get("ablation") == name:
            labels = {s for label in run_labels(run) for s in siblings.get(label, [label])}
            for label in sorted(labels):
                grouped.setdefault(label, []).append(run)
    for variant in ablation.variants:
        if variant.source is not None:  # e.g. Table 1's FE_CLS: a map of Table 2's run
            other, label = variant.source
            grouped[variant.label] = ablation_runs(runs, method, other).get(label, [])
    return grouped


def ablation_table(runs_root: Path | str, method: str, name: str, *, data_root: Path | str,
                   category: str, budget: str, metric: str | None = None) -> list[dict[str, Any]]:
    """One row per variant: the paper's value, our mean and spread over seeds, run count.

    Only runs on ``data_root/category`` (same dataset fingerprint) with ``budget`` count: a
    mean over runs on the embedded sample and on the full data would be neither's result.
    """
    ablation = find_ablation(method, name)
    metric = metric or ablation.metric  # another key of metrics.json than the ablation's own
    fingerprint = dataset_fingerprint(data_root, category)
    runs, _ = list_runs(runs_root)
    runs = [r for r in runs if run_fingerprint(r) == fingerprint and r.config.get("budget") == budget]
    grouped = ablation_runs(runs, method, name)
    rows = []
    for variant in ablation.variants:
        values = [variant.value(r.metrics, metric) for r in grouped.get(variant.label, [])]
        values = [v for v in values if v is not None]
        mean = sum(values) / len(values) if values else None
        spread = (max(values) - min(values)) if len(values) > 1 else None
        rows.append({"variant": variant.label, "paper": variant.paper_value, "ours": mean,
                     "spread": spread, "runs": len(values), "overrides": variant.overrides})
    return rows
