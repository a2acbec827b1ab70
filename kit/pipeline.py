"""One experiment from data to run folder: fit, pick the threshold on held-out normals,
score the test split, compute metrics, store everything.

Which data every choice uses:
- the model sees only the fit part of ``train/good``;
- the decision threshold and the map display statistics use the held-out normal part
  (``val_fraction`` of ``train/good``), or the fit images themselves when ``val_fraction`` is 0
  (then ``threshold_source`` says "fit images (in-sample)");
- the test split is used for metrics only.
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

import kit
from kit import metrics as M
from kit.allocator import release_free_memory
from kit.data import (Category, DataWarning, ImageSet, Sample, check_masks, find_category,
                      split_train_val, subsample)
from kit.method import (AnomalyMethod, EpochCallback, FitContext, method_class,
                        seed_everything)
from kit.devices import resolve_device
from kit.paths import source_commit
from kit.rows import RowsError, gather_rows
from kit.runfacts import MemoryWarning, PeakRSS, memory_warning, model_facts
from kit.runstore import Run, RunError, check_run_target, display_maps, load_run, write_run

EMBED_TEST = 240  # test images whose features are stored for the embedding plots
EMBED_NORMAL = 120  # training (defect-free) images stored likewise
RECONSTRUCTION_SAMPLE = 64  # test images whose reconstruction a run keeps (both labels)


@dataclass
class Scored:
    """Scores ``[N]`` and maps ``[N, S, S]`` of a list of samples, and the seconds it took;
    the method's named maps ``{name: [N, S, S]}`` with their image scores ``{name: [N]}``, and
    its reconstructions ``[N, 3, S, S]`` uint8 where it makes them."""

    scores: np.ndarray
    maps: np.ndarray
    seconds: float
    named_scores: dict[str, np.ndarray] = field(default_factory=dict)
    named_maps: dict[str, np.ndarray] = field(default_factory=dict)
    reconstructions: np.ndarray | None = None

    def of(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [N], maps [N, S, S])`` of the primary map or of a named one."""
        if name == "primary":
            return self.scores, self.maps
        return self.named_scores[name], self.named_maps[name]


def score_samples(method: AnomalyMethod, samples: list[Sample], progress: bool = True,
                  desc: str = "scoring") -> Scored:
    """Run ``method.predict`` over samples in batches; time only the prediction itself."""
    images = ImageSet(samples, method.config.image_size)
    return score_images(method, images.tensor(progress=progress, desc=f"{desc}: loading"),
                        progress, desc)


def score_images(method: AnomalyMethod, images: torch.Tensor, progress: bool = False,
                 desc: str = "scoring") -> Scored:
    """:func:`score_samples` of decoded images, uint8 ``[N, 3, S, S]`` at the method's size.

    No no-grad or inference-mode context around ``predict``: each method picks its own
    (DifferNet's gradient maps need autograd). The dashboard scores uploads through here, so
    an upload gets exactly the score its run would give the same pixels.
    """
    from kit.ort import setup_seconds

    seconds = 0.0
    step = method.config.batch_size

    def batches():
        nonlocal seconds
        for first in progress_bar(range(0, len(images), step), desc, progress):
            batch = images[first:first + step].float() / 255.0
            start, setup = time.perf_counter(), setup_seconds()
            pred = method.predict(batch)
            # a graph traced for ONNX Runtime on first use is set-up, not inference (kit/ort.py)
            seconds += time.perf_counter() - start - (setup_seconds() - setup)
            parts = {"scores": pred.image_scores.detach().float(),
                     "maps": pred.anomaly_maps.detach().float()}
            for name in pred.named_maps:
                parts["score", name] = pred.map_score(name).detach().float()
                parts["map", name] = pred.named_maps[name].detach().float()
            if pred.reconstructions is not None:
                parts["recon"] = (pred.reconstructions.detach().float().clamp(0, 1) * 255
                                  ).round().to(torch.uint8)
            yield first, parts

    # every map of every image at the method's size: gathered in place, not joined from pieces
    try:
        rows = {key: t.numpy() for key, t in gather_rows(len(images), batches()).items()}
    except RowsError as err:  # a predict whose batches disagree: say whose
        raise ValueError(f"{type(method).__name__}.predict: {err}") from err
    if not rows:
        s = method.config.image_size
        return Scored(np.zeros(0, np.float32), np.zeros((0, s, s), np.float32), 0.0)
    names = [key[1] for key in rows if isinstance(key, tuple) and key[0] == "map"]
    return Scored(rows["scores"], rows["maps"], seconds,
                  {name: rows["score", name] for name in names},
                  {name: rows["map", name] for name in names}, rows.get("recon"))


def map_statistics(normal_maps: np.ndarray) -> dict[str, float]:
    """Quantiles of anomaly-map values on normal images: the display scale of a run.

    The dashboard maps ``p50`` to the bottom of the colour scale and ``p999`` to where
    defects begin, the same for every image, instead of per-image min-max (which makes
    normal images look defective).
    """
    values = normal_maps.astype(np.float32).ravel()
    if values.size > 4_000_000:  # quantiles of a seeded subsample are plenty for display
        values = np.random.default_rng(0).choice(values, 4_000_000, replace=False)
    q = np.quantile(values, [0.5, 0.9, 0.99, 0.999])
    return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "p999": float(q[3]),
            "max": float(values.max()), "min": float(values.min())}


def _embedding_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded subset of at most ``n`` indices keeping the normal/defect ratio."""
    if len(labels) <= n:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        k = max(1, int(round(n * len(idx) / len(labels))))
        picked.append(rng.choice(idx, min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def collect_features(method: AnomalyMethod, train: list[Sample], test: list[Sample],
                     seed: int, progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Features of a sample of training and test images in every space the method has."""
    test_labels = np.array([s.label for s in test])
    test_pick = [test[i] for i in _embedding_indices(test_labels, EMBED_TEST, seed)]
    train_pick = [train[i] for i in _embedding_indices(np.zeros(len(train)), EMBED_NORMAL, seed)]
    samples = train_pick + test_pick
    splits = np.array(["train"] * len(train_pick) + ["test"] * len(test_pick))
    labels = np.array([s.label for s in samples])
    defect = np.array([s.defect_type for s in samples])
    images = ImageSet(samples, method.config.image_size)
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in images.batches(method.config.batch_size, progress=progress, desc="features"):
        for space, x in method.embed(batch).items():
            chunks.setdefault(space, []).append(x.detach().float().cpu().numpy())
    return {space: {"x": np.concatenate(xs).astype(np.float32), "label": labels,
                    "split": splits, "defect_type": defect}
            for space, xs in chunks.items()}


def evaluate_scored(test: list[Sample], scored: Scored, image_size: int, threshold: float | None,
                    has_masks: bool, name: str = "primary",
                    masks_include: tuple[np.ndarray, np.ndarray] | None = None,
                    ranked: M.PixelRankings | None = None) -> dict[str, Any]:
    """Metrics of scored test samples (pixel metrics only where masks exist), of the primary
    map or of the named map ``name``, with the same metrics per defect type (``by_defect``);
    with masks, also ``pixel_auroc_per_image`` (:func:`kit.metrics.per_image_pixel_auroc`).
    ``masks_include``: ``ImageSet(test, image_size).masks()`` when the caller has read them;
    ``ranked``: :func:`rank_pixels` of the same map, when the caller has it."""
    labels = np.array([s.label for s in test])
    types = [s.defect_type for s in test]
    scores, maps = scored.of(name)
    if has_masks:
        masks, include = masks_include or ImageSet(test, image_size).masks()
        ranked = ranked or rank_pixels(test, scored, (masks, include), name)
        return {**M.evaluate(scores, labels, maps, masks, include, threshold=threshold,
                             ranked=ranked),
                # beside the pooled value: a map can localise inside each image while its
                # level drifts between images (NDP-Net's MSDSM on MTD), which pooling hides
                "pixel_auroc_per_image": M.per_image_pixel_auroc(maps, masks, include),
                "by_defect": M.by_defect_type(scores, labels, types, maps, masks, include,
                                              ranked=ranked)}
    return {**M.evaluate(scores, labels, threshold=threshold),
            "by_defect": M.by_defect_type(scores, labels, types)}


def rank_pixels(test: list[Sample], scored: Scored,
                masks_include: tuple[np.ndarray, np.ndarray], name: str = "primary"
                ) -> M.PixelRankings:
    """:func:`kit.metrics.pixel_rankings` of a scored map (the primary one or ``name``)."""
    masks, include = masks_include
    return M.pixel_rankings(scored.of(name)[1], masks, include,
                            np.array([s.label for s in test]), [s.defect_type for s in test])


def named_map_metrics(test: list[Sample], scored: Scored, normal: Scored, image_size: int,
                      quantile: float, has_masks: bool,
                      masks_include: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> dict[str, dict[str, Any]]:
    """``{name: metrics}`` of every named map, each thresholded on its own held-out normal
    scores exactly as the primary map is."""
    out = {}
    for name in scored.named_maps:
        threshold = M.threshold_from_normal(normal.named_scores[name], quantile)
        out[name] = evaluate_scored(test, scored, image_size, threshold, has_masks, name,
                                    masks_include)
    return out


@dataclass(frozen=True)
class RunTarget:
    """One run folder of :func:`run_experiments`: where it goes, its overrides and tags."""

    out_dir: Path | str
    overrides: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)


def fit_settings(method_name: str, budget: str = "quick", seed: int = 0,
                 overrides: dict[str, Any] | None = None) -> str:
    """The settings a fit depends on, as one string: runs with equal ``fit_settings`` learn
    the same model, whatever their scoring-only settings (``MethodConfig.SCORING``, e.g.
    DifferNet's number of test transforms) or runtime ones (``RUNTIME``)."""
    cls = method_class(method_name).config_cls
    return settings_of_fit(method_name, cls.for_budget(budget, seed=seed, **(overrides or {})))


def settings_of_fit(method_name: str, config) -> str:
    """:func:`fit_settings` of a config already built (a ``MethodConfig`` of ``method_name``)."""
    left_out = set(config.SCORING) | set(config.RUNTIME)
    return json.dumps({"method": method_name, **{k: v for k, v in config.to_dict().items()
                                                 if k not in left_out}},
                      sort_keys=True, default=str)


def run_experiment(method_name: str, data_root: Path | str, category: str, out_dir: Path | str,
                   budget: str = "quick", seed: int = 0, overrides: dict[str, Any] | None = None,
                   tags: dict[str, Any] | None = None, progress: bool = True,
                   overwrite: bool = False,
                   on_stage: Callable[[str, float], None] | None = None,
                   on_epoch: EpochCallback | None = None) -> Path:
    """Fit ``method_name`` on ``category`` and write a complete run to ``out_dir``.

    ``tags`` land in config.json (e.g. ``{"ablation": "table3", "variant": "A"}``) so the
    dashboard can find the runs of an ablation. ``on_stage(stage, fraction)`` is called as the
    run moves on (the dashboard drives its progress bar with it); ``on_epoch(epoch, epochs,
    losses)`` after each training epoch of a trained method (the dashboard's loss curve).
    """
    return run_experiments(method_name, data_root, category,
                           [RunTarget(out_dir, dict(overrides or {}), dict(tags or {}))],
                           budget=budget, seed=seed, progress=progress, overwrite=overwrite,
                           on_stage=on_stage, on_epoch=on_epoch)[0]


def run_experiments(method_name: str, data_root: Path | str, category: str,
                    targets: list[RunTarget], budget: str = "quick", seed: int = 0,
                    progress: bool = True, overwrite: bool = False,
                    on_stage: Callable[[str, float], None] | None = None,
                    on_epoch: EpochCallback | None = None,
                    on_written: Callable[[Path], None] | None = None) -> list[Path]:
    """:func:`run_experiment` for several runs that share one fit: their overrides may differ
    only in scoring settings (equal :func:`fit_settings`), so the model is fitted once and each
    run scores the test split with its own settings (DifferNet's Table 3 D-G differ only in
    the number of test transforms). Each run is exactly what :func:`run_experiment` would
    write alone: the random state after the fit is restored before each run's scoring, and
    each records the fit's time and memory (config.json ``fit_shared_with`` names the others).
    ``on_written(path)`` after each run is written. Returns the run folders in order.
    """
    if not targets:
        return []
    stage = on_stage or (lambda name, fraction: None)
    stage("reading data", 0.0)
    source_commit()  # asked now: the code this run is made with (asked once per process)
    # Everything that can be refused is checked before the fit, never after it: the run
    # folders, the settings (the device among them), the data layout and every mask.
    data_root = Path(data_root).resolve()  # runs store absolute image paths
    cls = method_class(method_name)
    configs = [cls.config_cls.for_budget(budget, seed=seed, **t.overrides) for t in targets]
    resolve_device(configs[0].device)
    first_fit = settings_of_fit(method_name, configs[0])
    for t, config in zip(targets[1:], configs[1:]):
        if settings_of_fit(method_name, config) != first_fit:
            raise ValueError(f"{t.out_dir}: its overrides {t.overrides} change the fit of "
                             f"{targets[0].out_dir} ({targets[0].overrides}); runs that share "
                             f"a fit may differ only in {', '.join(cls.config_cls.SCORING)}")
    out_dirs = []
    for t in targets:
        if not overwrite and (Path(t.out_dir).exists() or Path(t.out_dir).is_symlink()):
            raise RunError(existing_run_message(Path(t.out_dir), method_name, budget, seed,
                                                t.overrides, data_root, category))
        out_dirs.append(check_run_target(t.out_dir, overwrite))
    if len(set(out_dirs)) < len(out_dirs):
        raise ValueError(f"runs that share a fit need distinct folders; got {out_dirs}")
    cat = find_category(data_root, category)
    cat.warnings = check_masks(cat, progress)
    warn_left_out(cat)
    release_free_memory()  # the run's peak memory is its own, not what earlier runs left
    seed_everything(seed)
    method = cls(configs[0])
    cfg = method.config
    fit_samples, val_samples = split_train_val(cat.train, cfg.val_fraction, seed)
    if cfg.max_train_images:
        fit_samples = subsample(fit_samples, cfg.max_train_images, seed)
    context = FitContext(held_out=ImageSet(val_samples, cfg.image_size) if val_samples else None,
                         synthetic=synthetic_generator(fit_samples, cat.name, cfg.image_size, seed),
                         seed=seed, device=method.device, on_epoch=on_epoch, progress=progress)

    too_big = memory_warning(method_name, budget, len(fit_samples), n_test=len(cat.test))
    if too_big:
        warnings.warn(too_big, MemoryWarning, stacklevel=2)
    stage("fitting", 0.05)
    start = time.perf_counter()
    with PeakRSS() as fit_memory:
        train_log = method.fit(ImageSet(fit_samples, cfg.image_size), context)
    fitted = _Fitted(method, cat, fit_samples, val_samples, train_log,
                     time.perf_counter() - start, fit_memory.peak_mb, random_state())
    # masks are read once for every run and every map
    read = ImageSet(cat.test, cfg.image_size).masks() if cat.has_masks else None
    names = [Path(d).name for d in out_dirs]
    paths = []
    for target, config, out_dir in zip(targets, configs, out_dirs):
        release_free_memory()  # each run's scoring peak is its own
        set_random_state(fitted.random_state)  # as if this run's scoring followed the fit alone
        method.config = config  # differs from the fitted one in scoring settings only
        shared = [n for n in names if n != Path(out_dir).name]
        paths.append(_score_and_write(fitted, method_name, data_root, category, out_dir,
                                      budget, seed, target, read, shared, overwrite,
                                      progress, stage))
        if on_written:
            on_written(paths[-1])
    return paths


@dataclass
class _Fitted:
    """What a fit leaves for the runs that share it."""

    method: AnomalyMethod
    cat: Category
    fit_samples: list[Sample]
    val_samples: list[Sample]
    train_log: dict[str, Any]
    fit_seconds: float
    fit_peak_mb: float | None
    random_state: tuple


def random_state() -> tuple:
    """The state of python's, numpy's and torch's CPU random generators."""
    import random
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def set_random_state(state: tuple) -> None:
    import random
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


def _score_and_write(fitted: _Fitted, method_name: str, data_root: Path, category: str,
                     out_dir: Path, budget: str, seed: int, target: RunTarget,
                     masks_include: tuple[np.ndarray, np.ndarray] | None, shared: list[str],
                     overwrite: bool, progress: bool, stage: Callable[[str, float], None]) -> Path:
    """Score the held-out normals and the test split with ``fitted.method`` as configured now,
    compute the metrics and write one run folder."""
    method, cat = fitted.method, fitted.cat
    cfg = method.config
    fit_samples, val_samples = fitted.fit_samples, fitted.val_samples
    normal_samples = val_samples or fit_samples
    stage("scoring held-out normals", 0.6)
    # the peak covers the metrics too: sorting every test pixel of every map can need more
    # memory than scoring, and the run's recorded peaks should bound the process's
    with PeakRSS() as score_memory:
        normal = score_samples(method, normal_samples, progress, desc="scoring normals")
        threshold = M.threshold_from_normal(normal.scores, cfg.threshold_quantile)
        stage("scoring the test split", 0.7)
        info_before = method.inference_info()
        test = score_samples(method, cat.test, progress, desc="scoring test")
        info_after = method.inference_info()
        # metrics on the full-size maps, before the run stores display-sized copies
        masks, include = masks_include or (None, np.zeros(len(cat.test), bool))
        labels = np.array([s.label for s in cat.test])
        # the primary map's pixels sorted once, for its metrics and its curves
        ranked = rank_pixels(cat.test, test, masks_include) if cat.has_masks else None
        results = evaluate_scored(cat.test, test, cfg.image_size, threshold, cat.has_masks,
                                  masks_include=masks_include, ranked=ranked)
        curve_data = M.curves(test.scores, labels, test.maps if cat.has_masks else None, masks,
                              include if cat.has_masks else None, ranked=ranked)
        del ranked  # its sorted copies of every pixel: not held through what follows
        per_map = named_map_metrics(cat.test, test, normal, cfg.image_size,
                                    cfg.threshold_quantile, cat.has_masks, masks_include)
    inference_info = {k: v - info_before.get(k, 0) if isinstance(v, (int, float)) else v
                      for k, v in info_after.items()}
    stage("collecting features for embeddings", 0.9)
    features = collect_features(method, fit_samples, cat.test, seed, progress)

    state = method.state_dict()
    metrics = {
        **results,
        "maps": per_map,
        "method": method_name, "backbone": cfg.backbone, "image_size": cfg.image_size,
        "budget": budget, "seed": seed, "n_train": len(fit_samples), "n_val": len(val_samples),
        "n_test": len(cat.test), "fit_seconds": round(fitted.fit_seconds, 3),
        "infer_ms_per_image": round(1000 * test.seconds / max(1, len(cat.test)), 3),
        "inference_info": inference_info,
        "threshold_source": "held-out normal training images" if val_samples
        else "fit images (in-sample)",
        "dataset": cat.name, "device": str(method.device),
        "fit_peak_rss_mb": fitted.fit_peak_mb, "score_peak_rss_mb": score_memory.peak_mb,
        **model_facts(method.modules(), state),
    }
    config = {
        "method": method_name, "method_config": cfg.to_dict(), "data_root": str(data_root),
        "category": category, "budget": budget, "seed": seed, "overrides": target.overrides,
        "tags": target.tags, "train_log": fitted.train_log, "kit_version": kit.__version__,
        "commit": source_commit(), "torch": torch.__version__, "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "fit_images": [s.name for s in fit_samples], "val_images": [s.name for s in val_samples],
        "data_warnings": cat.warnings[:50],
        "dataset": {"root": str(data_root), "category": category,
                    "fingerprint": cat.fingerprint()},
    }
    if shared:  # one fit served these runs too: its seconds are counted once per run folder
        config["fit_shared_with"] = shared
    rows = [{"index": i, "name": s.name, "path": str(s.path), "defect_type": s.defect_type,
             "label": s.label, "score": float(test.scores[i]), "pixel_included": bool(include[i])}
            for i, s in enumerate(cat.test)]
    reconstructions = None
    if test.reconstructions is not None:
        keep = _embedding_indices(labels, RECONSTRUCTION_SAMPLE, seed)
        reconstructions = (keep, test.reconstructions[keep])
    stage("writing the run", 0.97)
    path = write_run(out_dir, config=config, metrics=metrics, scores=rows, maps=test.maps,
                     map_stats={**map_statistics(display_maps(normal.maps)), "threshold": threshold},
                     named_maps=test.named_maps,
                     named_map_stats={name: map_statistics(display_maps(normal.named_maps[name]))
                                      for name in test.named_maps},
                     reconstructions=reconstructions,
                     curves=curve_data, features=features,
                     checkpoint={"method": method_name, "config": cfg.to_dict(), "state": state},
                     overwrite=overwrite)
    stage("done", 1.0)
    return path


def synthetic_generator(fit_samples: list[Sample], category: str, image_size: int, seed: int):
    """The seeded synthetic-defect generator of a fit (``kit.synthetic``) over its training
    images; built lazily by the generator itself, so methods that never call it pay nothing."""
    from kit.synthetic import DefectGenerator, category_is_texture
    return DefectGenerator([s.path for s in fit_samples], image_size, seed,
                           texture=category_is_texture(category))


def warn_left_out(cat: Category, shown: int = 10) -> None:
    """One DataWarning naming the defect images the pixel metrics leave out, if any."""
    if not cat.warnings:
        return
    more = len(cat.warnings) - shown
    lines = cat.warnings[:shown] + ([f"... and {more} more (config.json: data_warnings)"]
                                    if more > 0 else [])
    warnings.warn(f"{len(cat.warnings)} defect image(s) of {cat.root / cat.name} count for the "
                  "image metrics but are left out of the pixel metrics:\n  " + "\n  ".join(lines),
                  DataWarning, stacklevel=3)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))  # tuples -> lists, as in config.json


def config_differences(run: Run, method_name: str, budget: str = "quick", seed: int = 0,
                       overrides: dict[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    """``[(setting, stored value, value these arguments give now)]`` where ``run`` differs
    from the config ``method_name`` would be built with now (the method name included)."""
    if run.method != method_name:
        return [("method", run.method, method_name)]
    cls = method_class(method_name)
    expected = _plain(cls.config_cls.for_budget(budget, seed=seed, **(overrides or {})).to_dict())
    stored = _plain(run.config.get("method_config"))
    stored = stored if isinstance(stored, dict) else {}
    return [(key, stored.get(key), expected[key]) for key in expected
            if stored.get(key) != expected[key] and key not in cls.config_cls.RUNTIME]


def run_fingerprint(run: Run) -> str | None:
    """The dataset fingerprint a run stored (None for runs made before runs recorded it)."""
    dataset = run.config.get("dataset")
    return dataset.get("fingerprint") if isinstance(dataset, dict) else None


def run_is_current(run_dir: Path | str, method_name: str, budget: str = "quick", seed: int = 0,
                   overrides: dict[str, Any] | None = None, fingerprint: str | None = None) -> bool:
    """True if ``run_dir`` is a complete run made with the config these arguments give *now*,
    and, when ``fingerprint`` is given (:func:`kit.data.dataset_fingerprint`), on that data.

    Reusing a run is only safe when its stored method config equals today's (a budget changed
    in the code since, or other overrides, make it stale) and it saw the same data (a run on
    the embedded sample is no MTD result). Builds no model.
    """
    try:
        run = load_run(run_dir)
    except RunError:
        return False
    if fingerprint is not None and run_fingerprint(run) != fingerprint:
        return False
    return not config_differences(run, method_name, budget, seed, overrides)


def existing_run_message(run_dir: Path, method_name: str, budget: str, seed: int,
                         overrides: dict[str, Any], data_root: Path, category: str) -> str:
    """Why ``run_dir`` is not written without ``overwrite``, and how it compares with the run
    asked for: another config (which settings), the same one (then nothing needs doing), or
    a folder that is not a complete run."""
    try:
        run = load_run(run_dir)
    except RunError as err:
        return f"{run_dir}: exists already and is not a complete run ({err}); choose another --out"
    changed = config_differences(run, method_name, budget, seed, overrides)
    stored_data = (run.config.get("data_root"), run.config.get("category"))
    if stored_data != (str(data_root), category):
        changed.append(("data", "/".join(map(str, stored_data)), f"{data_root}/{category}"))
    if not changed:
        score = run.metrics.get("image_auroc")
        shown = f"{score:.3f}" if isinstance(score, float) else "-"
        return (f"{run_dir}: exists already, made with these same settings and data (image "
                f"AUROC {shown}): nothing to do. Pass --overwrite to fit it again")
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changed[:6])
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    return (f"{run_dir}: exists already, made with other settings ({listed}{more}). Pass "
            "--overwrite to replace it, or choose another --out")


def restore_method(run_dir: Path | str, device: str = "auto") -> AnomalyMethod:
    """Rebuild a run's method from its checkpoint (``weights_only=True``) on ``device``
    (not the device it was fitted on: a run made on a GPU opens on a laptop)."""
    run = load_run(run_dir)
    ckpt = run.checkpoint()
    if not {"method", "config", "state"} <= set(ckpt) or not isinstance(ckpt["config"], dict):
        raise RunError(f"{run.path / 'checkpoint.pt'}: not a run checkpoint (expected method, "
                       "config and state)")
    cls = method_class(ckpt["method"])
    config = cls.config_cls.from_dict({**ckpt["config"], "device": device})
    seed_everything(config.seed)  # same seed as at fit time: untrained ("none") backbones match too
    method = cls(config)
    try:
        method.load_state_dict(ckpt["state"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RunError(f"{run.path / 'checkpoint.pt'}: its state does not fit a {ckpt['method']} "
                       f"model with the stored config ({type(err).__name__}: {first[:300]})") from None
    return method


def rescore_run(run_dir: Path | str, data_root: Path | str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Score a run's test split again from its checkpoint; returns fresh metrics."""
    run = load_run(run_dir)
    cat = find_category(data_root or run.config["data_root"], run.config["category"])
    scored = full_size_scores(run_dir, data_root, progress)
    return evaluate_scored(cat.test, scored, run.metrics["image_size"],
                           run.metrics.get("threshold"), cat.has_masks)


def full_size_scores(run_dir: Path | str, data_root: Path | str | None = None,
                     progress: bool = True) -> Scored:
    """A run's test split scored again from its checkpoint: maps at the method's full size
    ``[N, S, S]`` (the run folder keeps display copies only), in scores.csv order."""
    run = load_run(run_dir)
    method = restore_method(run_dir)
    cat = find_category(data_root or run.config["data_root"], run.config["category"])
    return score_samples(method, cat.test, progress, desc="re-scoring test")


def describe(category: Category) -> str:
    s = category.summary()
    counts = ", ".join(f"{k}: {v}" for k, v in s["test_counts"].items())
    return f"{s['category']}: {s['n_train']} train, {s['n_test']} test ({counts})"


def progress_bar(iterable, desc: str, progress: bool, total: int | None = None):
    """tqdm with the kit's defaults (hidden when ``progress`` is False)."""
    return tqdm(iterable, desc=desc, disable=not progress, leave=False, total=total)
