"""Methods side by side on the same test images (notebook 05 and the dashboard): aligning runs
by image, picking images to show, each run's map on its own fixed scale."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kit.data import Category, read_image, read_mask
from kit.plots import MapScale, resize_map
from kit.runstore import Run


def map_scale(run: Run, name: str | None = None) -> MapScale:
    """The fixed display scale of a run's primary map (``name`` None) or of one of its named
    maps: that map's normal-data statistics and its own image threshold."""
    if name in (None, "primary"):
        return MapScale.from_stats(run.map_stats, run.metrics.get("threshold"))
    named = (run.metrics.get("maps") or {}).get(name) or {}
    return MapScale.from_stats(run.map_stats_of(name), named.get("threshold"))


def shared_images(runs: Sequence[Run]) -> list[str]:
    """Names of the test images every run scored, in the first run's order. Runs on other data
    share none; the caller says so rather than showing maps of different images."""
    if not runs:
        return []
    common = set.intersection(*({row["name"] for row in run.scores} for run in runs))
    return [row["name"] for row in runs[0].scores if row["name"] in common]


def pick_images(run: Run, names: Sequence[str], per_type: int = 1, normals: int = 1) -> list[str]:
    """A deterministic choice among ``names`` (from :func:`shared_images`): the first
    ``per_type`` defective images of each defect type, then ``normals`` defect-free ones."""
    rows = {row["name"]: row for row in run.scores}
    chosen: list[str] = []
    counts: dict[str, int] = {}
    for name in names:
        row = rows[name]
        key = row["defect_type"] if row["label"] == 1 else "\0good"
        limit = per_type if row["label"] == 1 else normals
        if counts.get(key, 0) < limit:
            counts[key] = counts.get(key, 0) + 1
            chosen.append(name)
    defective = [n for n in chosen if rows[n]["label"] == 1]
    return defective + [n for n in chosen if rows[n]["label"] == 0]


def side_by_side(runs: Sequence[Run], names: Sequence[str], category: Category,
                 size: int | None = None) -> dict:
    """What :func:`kit.plots.map_rows` draws for ``runs`` on the test images ``names``:
    ``{"images": [N] x [S, S, 3] float in [0, 1], "masks": [N] x [S, S] bool,
    "titles": [N] defect types, "rows": {run label: ([N] x [S, S] maps, MapScale)}}``. ``S`` is
    the runs' display size (the run store keeps maps at that size) unless ``size`` is given.
    Each row keeps its run's own scale: maps of different methods are not comparable in value,
    only in where they light up."""
    samples = {s.name: s for s in category.test}
    missing = [n for n in names if n not in samples]
    if missing:
        raise ValueError(f"{category.root / category.name}: no test image {missing[0]!r} "
                         "(the runs were made on other data)")
    size = size or int(runs[0].maps.shape[-1])
    rows = {}
    for run in runs:
        index = {row["name"]: row["index"] for row in run.scores}
        maps = run.maps[[index[n] for n in names]].astype("float32")
        if maps.shape[-1] != size:
            maps = np.stack([resize_map(m, size) for m in maps])
        label = run.method if sum(r.method == run.method for r in runs) == 1 else run.name
        rows[label] = (list(maps), map_scale(run))
    return {"images": [read_image(samples[n].path, size) / 255.0 for n in names],
            "masks": [read_mask(samples[n], size) for n in names],
            "titles": [samples[n].defect_type for n in names], "rows": rows}


def default_runs(runs_root, data_root, category: str, budget: str = "quick", seed: int = 0,
                 methods: Sequence[str] | None = None, progress: bool = True,
                 extra_overrides: dict[str, dict] | None = None) -> list[Run]:
    """Every method's run of its default settings on this data, made where missing: the runs
    ``python -m kit bench --no-ablations`` makes (same folders, so each reuses the other's),
    one after the other in this process. Returns them in method order. ``extra_overrides``:
    per method, settings added (the tests' tiny ones), as :func:`kit.grid.plan_grid`."""
    from dataclasses import asdict

    from kit.grid import plan_grid, run_job
    from kit.pipeline import progress_bar
    from kit.runstore import load_run

    jobs = plan_grid(runs_root, data_root, [category], list(methods) if methods else None,
                     budget=budget, seeds=(seed,), ablations=False,
                     extra_overrides=extra_overrides)
    runs = []
    for job in progress_bar(jobs, "default runs", progress):
        if not job.is_complete():
            run_job(asdict(job))
        runs.append(load_run(job.run_dir))
    return runs


def localisation(run_dir, data_root=None, progress: bool = False,
                 rescore: bool = False) -> dict[str, dict[str, float]]:
    """``{map name: {"pooled", "per_image"}}`` for the primary map and every named map of a run:
    the pixel AUROC over all pixels of all included images beside the mean of each defective
    image's own pixel AUROC (:func:`kit.metrics.per_image_pixel_auroc`). Read from the run's
    metrics where it recorded both for every map; otherwise (runs made before it recorded the
    per-image value), or with ``rescore``, its test split is scored again at full size from the
    checkpoint."""
    from kit import metrics
    from kit.data import ImageSet, find_category
    from kit.pipeline import full_size_scores
    from kit.runstore import load_run

    run = load_run(run_dir)
    recorded = {"primary": run.metrics, **(run.metrics.get("maps") or {})}
    if not rescore and all("pixel_auroc_per_image" in m for m in recorded.values()):
        return {name: {"pooled": m.get("pixel_auroc"), "per_image": m["pixel_auroc_per_image"]}
                for name, m in recorded.items()}
    cat = find_category(data_root or run.config["data_root"], run.config["category"])
    scored = full_size_scores(run_dir, data_root, progress=progress)
    masks, include = ImageSet(cat.test, scored.maps.shape[-1]).masks()
    out = {}
    for name in ["primary", *sorted(scored.named_maps)]:
        maps = scored.of(name)[1]
        out[name] = {"pooled": metrics.pixel_metrics(maps, masks, include)["pixel_auroc"],
                     "per_image": metrics.per_image_pixel_auroc(maps, masks, include)}
    return out
