"""The reproduction report: runs -> committed result data -> Markdown, plots and README table.

``python -m kit report`` does three things, each from the one before, never from typed numbers:

1. **collect**: every complete run under the runs root made by the grid or an ablation (tagged
   with ``ablation``) becomes one record of :data:`RESULTS_FILE` (``docs/results/runs.json``,
   plus a flat ``runs.csv`` beside it). Records are merged by run identity (method, data,
   category, budget, seed, ablation, variants, overrides): a run made again replaces its old
   record, and records of runs this machine no longer has are kept, so results made on other
   machines or by earlier sessions are not lost with their run folders.
2. **render**: :func:`render_report` turns the records into ``docs/report.md``: every method on
   every dataset and budget (mean and spread over seeds, fit time, inference, memory, size),
   each paper table beside the paper's values with the settings that differ, and which split
   every choice used. Plots go to ``docs/report/``. Bars start at 0.5 (chance for AUROC).
3. **README**: the results table between :data:`README_BEGIN` and :data:`README_END`.

The tests render the committed records and fail when the committed report or README table
differs from them (``tests/test_report.py``), so a typed edit cannot drift from the data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from kit.paths import REPO_ROOT, SAMPLE_ROOT

RESULTS_FILE = REPO_ROOT / "docs" / "results" / "runs.json"
SPEED_FILE = REPO_ROOT / "docs" / "results" / "speed.json"  # benchmarks/bench_methods.py writes it
PEER_FILE = REPO_ROOT / "docs" / "results" / "peer.json"  # benchmarks/peer_anomalib.py writes it
BACKBONES_FILE = REPO_ROOT / "docs" / "results" / "backbones.json"  # benchmarks/bench_backbones.py writes it
GRID_FILE = REPO_ROOT / "docs" / "results" / "grid.json"  # kit bench's logs of whole grids
GRID_TARGET_MINUTES = 30  # issue 13: the whole quick grid on MTD within 30 minutes on 2 cores
PEER_SPEEDUP_TARGET = 2.0  # issue 13: cflow at least 2x faster at inference than anomalib's CFlow
OVERHEAD_TARGET = 1.5  # issue 13: a method's inference at most 1.5x its bare backbone forward
REPORT_FILE = REPO_ROOT / "docs" / "report.md"
PLOTS_DIR = REPO_ROOT / "docs" / "report"
README_FILE = REPO_ROOT / "README.md"
README_BEGIN = "<!-- kit report: results table (python -m kit report writes it; do not edit) -->"
README_END = "<!-- end of kit report -->"

METRICS = ("image_auroc", "pixel_auroc", "pixel_aupr", "aupro")
METRIC_NAMES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC",
                "pixel_aupr": "pixel AUPR", "aupro": "AUPRO", "f1": "F1", "precision": "precision",
                "recall": "recall", "f1_max": "F1 max",
                "pixel_auroc_per_image": "pixel AUROC per image"}
# metrics a record keeps for its primary map and each named map; tables show METRICS and an
# ablation's extra_metrics (runs before the per-image value was recorded lack it)
MAP_METRICS = (*METRICS, "pixel_auroc_per_image")
# what a record keeps of metrics.json, besides MAP_METRICS and the named maps
FACTS = ("f1_max", "precision", "recall", "f1", "fit_seconds", "infer_ms_per_image",
         "fit_peak_rss_mb", "score_peak_rss_mb", "model_mb", "trainable_params", "total_params",
         "threshold_source", "backbone", "image_size", "n_train", "n_val", "n_test", "device")
CSV_COLUMNS = ("run", "method", "data", "category", "fingerprint", "budget", "seed", "ablation",
               "variants", "overrides", *MAP_METRICS, *FACTS, "cached_view_share", "cached_fit_share",
               "created", "kit_version", "commit", "torch")
CURVE_POINTS = 40  # points per curve kept in the result data (the reference curves' resolution)
# the papers' dataset keys (kit/papers: Paper.results) for the categories we have
PAPER_DATASETS = {("mtd", "magnetic_tile"): "mtd"}  # not the sample: the paper used all of MTD


def data_label(data_root: str | Path) -> str:
    """A name for the data that does not reveal this machine's paths: ``sample`` for the
    embedded sample, else the data root's folder name (``mtd`` for ../shared/data/mtd)."""
    root = Path(data_root)
    try:
        if root.resolve() == SAMPLE_ROOT.resolve():
            return "sample"
    except OSError:
        pass
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", root.name).strip("_") or "data"
    return "sample-data" if name == "sample" else name  # "sample" is the embedded sample only


def run_record(run) -> dict[str, Any]:
    """One record of the result data from a :class:`kit.runstore.Run`: plain JSON values."""
    m, c = run.metrics, run.config  # identity from config.json, which load_run validated
    tags = c.get("tags") or {}
    variants = tags.get("variants") or ([tags["variant"]] if tags.get("variant") else [])
    if isinstance(variants, str):
        variants = variants.split(",")
    variants = [str(v) for v in variants]
    overrides = _plain(c.get("overrides") or {})
    extra = extra_settings(c["method"], tags.get("ablation"), variants, overrides)
    record = {
        "run": run.name, "method": c["method"], "data": data_label(c.get("data_root", "")),
        "category": c.get("category"),
        "fingerprint": str(((c.get("dataset") or {}).get("fingerprint")) or "")[:8],
        "budget": c["budget"], "seed": c["seed"], "ablation": tags.get("ablation"),
        "variants": variants, "overrides": overrides, "extra": extra,
        # the method as configured, within its group's extra settings (groups never mix them)
        "default": is_default_run(c["method"], tags.get("ablation"), variants),
        **{k: _round(m.get(k)) for k in MAP_METRICS},
        **{k: _round(m.get(k)) for k in FACTS},
        "cached_view_share": cached_view_share(m.get("inference_info")),
        "cached_fit_share": cached_fit_share(c.get("train_log")),
        "maps": {name: {**{k: _round(v.get(k)) for k in MAP_METRICS if v.get(k) is not None},
                        **({"by_defect": by_defect_record(v["by_defect"])}
                           if v.get("by_defect") else {})}
                 for name, v in sorted((m.get("maps") or {}).items())},
        "by_defect": by_defect_record(m.get("by_defect") or {}),
        "curves": small_curves(run.curves),
        "created": c.get("created"), "kit_version": c.get("kit_version"),
        "commit": c.get("commit"), "torch": c.get("torch"),
    }
    return record


# a share of cached features above this makes a time "warm" wherever it is shown: a few hits
# (duplicate images, a cache filled in part) do not
WARM_SHARE = 0.05


def _share(hits: int, computed: int) -> float:
    return round(hits / (hits + computed), 3) if hits + computed else 0.0


def cached_view_share(info: dict[str, Any] | None) -> float | None:
    """The share of a run's test views whose features its feature cache served (DifferNet's
    ``inference_info``: cache hits against views sent through the backbone), rounded; None
    for a method without a feature cache. A run that shares a feature spec with an earlier run
    (of the grid, or the user's own) reads most of its test features from the cache, so its
    ``infer_ms_per_image`` is a warm timing, not the cost of scoring new images."""
    if not info or "feature_cache_hits" not in info:
        return None
    return _share(info.get("feature_cache_hits") or 0, info.get("backbone_views") or 0)


def cached_fit_share(train_log: dict[str, Any] | None) -> float | None:
    """:func:`cached_view_share` of the fit: the share of training views whose features came
    from the cache (DifferNet's ``train_log`` ``cache_hits`` / ``cache_misses``), None for a
    method that logs none. Such a fit skipped the backbone and its ``fit_seconds`` is warm."""
    if not train_log or "cache_hits" not in train_log:
        return None
    return _share(train_log.get("cache_hits") or 0, train_log.get("cache_misses") or 0)


def is_warm(share: float | None) -> bool:
    """Whether a cached share (:func:`cached_view_share`, :func:`cached_fit_share`) makes the
    time beside it warm."""
    return share is not None and share > WARM_SHARE


def warm_suffix(metrics: dict[str, Any]) -> str:
    """`` (warm: N% of the test views from the feature cache)`` for a warm run's
    ``metrics.json``, else ``""``: what the CLI and the notebooks print after the inference time."""
    share = cached_view_share(metrics.get("inference_info"))
    return f" (warm: {100 * share:.0f}% of the test views from the feature cache)" if is_warm(share) else ""


def by_defect_record(by_defect: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A run's per-defect-type metrics (:func:`kit.metrics.by_defect_type`), rounded."""
    return {t: {k: _round(v) for k, v in sorted(row.items()) if v is not None}
            for t, row in sorted(by_defect.items())}


def small_curves(curves: dict[str, Any], points: int = CURVE_POINTS) -> dict[str, Any]:
    """A run's curves.json (:func:`kit.metrics.curves`) cut to ``points`` per curve, 4 decimals:
    enough to draw the reference curves, small enough to commit."""
    import numpy as np

    out = {}
    for kind, curve in sorted((curves or {}).items()):
        if not curve:
            out[kind] = None
            continue
        keys = [k for k, v in curve.items() if isinstance(v, list)]
        n = len(curve[keys[0]]) if keys else 0
        keep = np.unique(np.linspace(0, n - 1, min(n, points)).round().astype(int)) if n else []
        out[kind] = {k: ([round(float(curve[k][i]), 4) for i in keep] if k in keys else curve[k])
                     for k in sorted(curve)}
    return out


def _ablation_of(method: str, ablation: str | None):
    from kit.method import method_class

    try:
        return method_class(method).paper.ablation(ablation or "")
    except (ValueError, KeyError):
        return None


def is_default_run(method: str, ablation: str | None, variants: list[str]) -> bool:
    """A run of the method's own settings: the grid's default run, or an ablation run that
    serves a plain variant (:func:`kit.experiments.is_plain_variant`: the full model)."""
    from kit.experiments import is_plain_variant
    from kit.grid import DEFAULT_ABLATION

    if ablation == DEFAULT_ABLATION:
        return True
    chosen = _ablation_of(method, ablation)
    return chosen is not None and any(v.label in variants and is_plain_variant(v)
                                      for v in chosen.variants)


def extra_settings(method: str, ablation: str | None, variants: list[str],
                   overrides: dict[str, Any]) -> dict[str, Any]:
    """The run's settings beyond its variant's own (a notebook's quick settings, the tests'
    tiny ones): runs are compared and averaged only with runs of the same extra settings."""
    chosen = _ablation_of(method, ablation)
    own = {}
    if chosen is not None:
        first = next((v for v in chosen.variants if v.label in variants), None)
        own = _plain(first.overrides) if first is not None else {}
    return {k: v for k, v in sorted(overrides.items()) if k not in own or own[k] != v}


def record_key(record: dict[str, Any]) -> str:
    """What makes two records the same experiment (a re-made run replaces the older one)."""
    ident = {k: record.get(k) for k in ("method", "data", "category", "fingerprint", "budget",
                                        "seed", "ablation", "variants", "overrides")}
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def collect(runs_root: Path | str, tagged_only: bool = True) -> list[dict[str, Any]]:
    """Records of the complete runs under ``runs_root`` (those with an ``ablation`` tag unless
    ``tagged_only`` is False); broken folders are skipped (``python -m kit list`` names them)."""
    return collect_with_skips(runs_root, tagged_only)[0]


def collect_with_skips(runs_root: Path | str, tagged_only: bool = True
                       ) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`collect`, and one message per run folder that could not be read."""
    from kit.runstore import list_runs

    runs, broken = list_runs(runs_root)
    records, skipped = [], list(broken)
    for run in runs:
        if tagged_only and not (run.config.get("tags") or {}).get("ablation"):
            continue
        try:
            records.append(run_record(run))
        except (KeyError, TypeError, ValueError, OSError) as err:  # a curves.json cut short, ...
            skipped.append(f"{run.path}: {type(err).__name__}: {err}")
    return records, skipped


def merge(old: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` and ``new`` records, one per key (the later ``created``); sorted for stable files."""
    merged: dict[str, dict[str, Any]] = {}
    for r in [*old, *new]:  # the newer run of an experiment wins, wherever it comes from
        key = record_key(r)
        if key not in merged or (r.get("created") or "", r["run"]) >= (
                merged[key].get("created") or "", merged[key]["run"]):
            merged[key] = r
    return sorted(merged.values(), key=_sort_key)


def _load_list(path: Path, what: str, item_ok) -> list[dict[str, Any]]:
    """A committed JSON list (``[]`` when the file is missing); ValueError naming the file."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); restore it from git") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) and item_ok(r) for r in data):
        raise ValueError(f"{path}: expected a list of {what}; restore it from git")
    return data


def load_results(path: Path | str = RESULTS_FILE) -> list[dict[str, Any]]:
    return _load_list(Path(path), "run records", lambda r: "method" in r)


def results_files(records: list[dict[str, Any]]) -> dict[str, str]:
    """``{"runs.json": text, "runs.csv": text}``: the result data, as committed."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({**r, "variants": ";".join(r["variants"]),
                         "overrides": json.dumps(r["overrides"], sort_keys=True)})
    return {"runs.json": json.dumps(records, indent=1, sort_keys=True) + "\n",
            "runs.csv": out.getvalue()}


# ---------------------------------------------------------------- rendering

def _sort_key(r: dict[str, Any]):
    return (r["method"], r["data"], r["category"] or "", r.get("fingerprint") or "", r["budget"],
            r["ablation"] or "", ",".join(r["variants"]),
            json.dumps(r["overrides"], sort_keys=True), r["seed"], r["run"])


def _round(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _stat(values: list[float], digits: int = 3) -> str:
    """``mean`` or ``mean ± spread`` (max - min over seeds); ``-`` when there is none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    text = f"{mean:.{digits}f}" if digits else f"{mean:.0f}"
    if len(values) > 1:
        spread = max(values) - min(values)
        text += f" ± {spread:.{digits}f}" if digits else f" ± {spread:.0f}"
    return text


def _stat_of_some(values: list[float | None]) -> str:
    """:func:`_stat`, saying how many runs it covers when some lack the value (runs made
    before the kit recorded a metric)."""
    known = [v for v in values if v is not None]
    text = _stat(known)
    if known and len(known) < len(values):
        return f"{text} ({len(known)} of {len(values)} runs)"
    return text


def mean_known(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None when none is."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def default_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of each method's default settings (:func:`is_default_run`)."""
    return [r for r in records if r.get("default")]


def newest_defaults(records: list[dict[str, Any]], key=lambda r: (r["method"], r["seed"])
                    ) -> dict[Any, dict[str, Any]]:
    """``{key(record): record}``: the newest default-settings record for each key (by default
    one per method and seed; the report's methods table and the speed benchmark choose so)."""
    newest: dict[Any, dict[str, Any]] = {}
    for r in default_records(records):
        k = key(r)
        if k not in newest or (r.get("created") or "") > (newest[k].get("created") or ""):
            newest[k] = r
    return newest


def variant_value(record: dict[str, Any], variant, metric: str) -> float | None:
    """The ablation ``variant``'s ``metric`` in a record: its named map's, or the primary one."""
    source = record if variant.map is None else record["maps"].get(variant.map) or {}
    return source.get(metric)


class Group(NamedTuple):
    """Runs whose numbers may be compared and averaged: same data (by fingerprint), budget and
    extra settings (:func:`extra_settings`); never across."""

    data: str
    category: str
    fingerprint: str
    budget: str
    extra: str  # JSON of the extra settings, "{}" for none

    @property
    def slug(self) -> str:
        """A file-name part: letters, digits, '.', '_' and '-' only."""
        extra = "" if self.extra == "{}" else "-x" + hashlib.sha1(self.extra.encode()).hexdigest()[:6]
        return _slug(f"{self.data}-{self.category}-{self.budget}-{self.fingerprint}{extra}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "x"


def record_group(r: dict[str, Any]) -> Group:
    return Group(r["data"], r["category"] or "", r.get("fingerprint") or "", r["budget"],
                 json.dumps(r.get("extra") or {}, sort_keys=True))


def _groups(records: list[dict[str, Any]]) -> list[tuple[Group, list[dict]]]:
    groups: dict[Group, list[dict]] = defaultdict(list)
    for r in records:
        groups[record_group(r)].append(r)
    order = {"mtd": 0, "sample": 2}
    return sorted(groups.items(), key=lambda kv: (order.get(kv[0].data, 1), kv[0].data,
                                                  kv[0].category, kv[0].extra != "{}",
                                                  kv[0].budget != "full", kv[0]))


def methods_table(records: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """One row per method with default-settings records: metrics, cost and the paper's value."""
    from kit.method import method_class

    rows = []
    by_method = defaultdict(list)
    for (name, _), r in sorted(newest_defaults(records).items()):
        by_method[name].append(r)
    for name in methods:
        rs = by_method.get(name)
        if not rs:
            continue
        paper = method_class(name).paper
        paper_key = PAPER_DATASETS.get((rs[0]["data"], rs[0]["category"] or ""))
        paper_values = paper.results.get(paper_key, {}) if paper_key else {}
        rows.append({
            "method": name, "seeds": sorted({r["seed"] for r in rs}),
            **{k: [r.get(k) for r in rs] for k in METRICS},
            "fit_seconds": [r.get("fit_seconds") for r in rs],
            "infer_ms_per_image": [r.get("infer_ms_per_image") for r in rs],
            "cached_view_share": [r.get("cached_view_share") for r in rs],
            "cached_fit_share": [r.get("cached_fit_share") for r in rs],
            "peak_rss_mb": [max(r.get("fit_peak_rss_mb") or 0, r.get("score_peak_rss_mb") or 0)
                            or None for r in rs],
            "model_mb": [r.get("model_mb") for r in rs],
            "paper": paper_values, "backbone": rs[0].get("backbone"),
            "image_size": rs[0].get("image_size"), "n_train": [r.get("n_train") for r in rs],
        })
    return rows


def real_data_tables(records: list[dict[str, Any]], methods: list[str]
                     ) -> Iterable[tuple[Group, list[dict[str, Any]], list[dict[str, Any]]]]:
    """``(group, its records, methods_table rows)`` for each group on real data (not the
    embedded sample) with default runs of any of ``methods``, in :func:`_groups`' order."""
    for group, rs in _groups(records):
        if group.data != "sample":
            rows = methods_table(rs, methods)
            if rows:
                yield group, rs, rows


def defect_rows(records: list[dict[str, Any]], methods: list[str]
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(types, rows)``: every method's default run per defect type (mean over seeds).

    types: ``{"name", "n", "pixel_share"}`` per defect type, largest share first; rows: one per
    method whose default records carry ``by_defect``, ``{"method", "all": {metric: value},
    "types": {type: {metric: value}}}``. Shares come from masks alone (the same for every
    method up to the map size), so the first record's are shown; a type missing from a
    method's runs reads None there.
    """
    by_method = defaultdict(list)
    for (name, _), r in sorted(newest_defaults(records).items()):
        if r.get("by_defect"):
            by_method[name].append(r)
    if not by_method:
        return [], []
    seen: dict[str, dict[str, Any]] = {}  # every type of any record; facts from the first seen
    for rs in by_method.values():
        for r in rs:
            for t, v in r["by_defect"].items():
                seen.setdefault(t, {"name": t, "n": v.get("n"), "pixel_share": v.get("pixel_share")})
    types = sorted(seen.values(), key=lambda t: (-(t["pixel_share"] or 0), t["name"]))
    rows = []
    for name in methods:
        rs = by_method.get(name)
        if rs:
            rows.append({"method": name,
                         "all": {k: mean_known([r.get(k) for r in rs]) for k in METRICS},
                         "types": {t["name"]: {k: mean_known([(r["by_defect"].get(t["name"]) or {}).get(k)
                                                         for r in rs]) for k in METRICS}
                                   for t in types}})
    return types, rows


def defect_markdown(types: list[dict[str, Any]], rows: list[dict[str, Any]],
                    metric: str = "pixel_auroc") -> str:
    """A table of ``metric`` per method (rows) and defect type (columns), then a generated
    line on the type with the most defect pixels."""
    def cell(v):
        return "-" if v is None else f"{v:.3f}"

    share = lambda t: ("" if t["pixel_share"] is None
                       else f", {100 * t['pixel_share']:.0f}% of defect pixels")
    head = ("| method | all types | "
            + " | ".join(f"{t['name']} ({t['n']} images{share(t)})" for t in types) + " |")
    lines = [head, "|" + "---|" * (len(types) + 2)]
    for row in rows:
        lines.append(f"| `{row['method']}` | {cell(row['all'][metric])} | "
                     + " | ".join(cell(row["types"][t["name"]][metric]) for t in types) + " |")
    big = types[0] if types and types[0]["pixel_share"] else None
    if big and metric.startswith("pixel") and rows:
        pairs = [(row["types"][big["name"]][metric], row["all"][metric]) for row in rows]
        pairs = [(v, a) for v, a in pairs if v is not None and a is not None]
        others = sorted(v for row in rows for t in types[1:]
                        if (v := row["types"][t["name"]][metric]) is not None)
        if pairs and others:
            import numpy as np

            lines += ["", f"`{big['name']}` holds {100 * big['pixel_share']:.0f}% of the defect "
                      f"pixels, the most of any type. Each method's {METRIC_NAMES[metric]} on it "
                      f"({min(v for v, _ in pairs):.3f}-{max(v for v, _ in pairs):.3f}) differs "
                      f"from its pooled value by at most {max(abs(v - a) for v, a in pairs):.3f}; "
                      f"on the other types the median over methods and types is "
                      f"{float(np.median(others)):.3f}."]
    return "\n".join(lines)


def warm_share(row: dict[str, Any], key: str = "cached_view_share") -> float | None:
    """The largest warm share (:func:`is_warm`) among a :func:`methods_table` row's runs, of the
    test views (``key`` "cached_view_share") or of the fit (``"cached_fit_share"``); None where
    no run's time is warm."""
    shares = [v for v in row.get(key) or [] if is_warm(v)]
    return max(shares) if shares else None


WARM_NOTES = {  # the footnotes of warm times: the mark, the column's share key, the text
    "infer_ms_per_image": ("†", "cached_view_share",
                           "† warm inference: in {seeds} the feature cache served up to {pct}% of "
                           "the test views (features an earlier run had computed for the same "
                           "images and transforms), so the time is not the cost of scoring new "
                           "images. The speed table of docs/report.md "
                           "(benchmarks/bench_methods.py) times every method cold."),
    "fit_seconds": ("‡", "cached_fit_share",
                    "‡ warm fit: in {seeds} the feature cache served up to {pct}% of the training "
                    "views, so the fit time leaves out their backbone passes."),
}


def _warm_cell(row: dict[str, Any], key: str) -> str:
    """A cost cell of :func:`methods_markdown`, marked when the time is warm."""
    mark, share_key, _ = WARM_NOTES[key]
    return _stat(row[key], 0) + (f" {mark}" if warm_share(row, share_key) else "")


def _warm_footnotes(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for key, (_, share_key, text) in WARM_NOTES.items():
        warm = [(row, share) for row in rows if (share := warm_share(row, share_key))]
        if warm:
            n_warm = sum(is_warm(v) for row, _ in warm for v in row.get(share_key) or [])
            n_all = sum(len(row[key]) for row, _ in warm)
            seeds = "these runs" if n_warm == n_all else f"{n_warm} of these {n_all} runs"
            lines += ["", text.format(seeds=seeds, pct=f"{100 * max(s for _, s in warm):.0f}")]
    return lines


def methods_markdown(rows: list[dict[str, Any]], with_paper: bool = True) -> str:
    head = ("| method | backbone, size | fit images | image AUROC | pixel AUROC | pixel AUPR | AUPRO | "
            "fit s | inference ms/image | peak RSS MB | model MB | seeds |"
            + (" paper (this dataset) |" if with_paper else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        paper = ", ".join(f"{METRIC_NAMES[k]} {v:.3f}" for k, v in sorted(row["paper"].items())
                          if k in METRIC_NAMES) or "-"
        cells = [f"`{row['method']}`", f"{row['backbone']}, {row['image_size']} px",
                 _stat(row.get("n_train") or [], 0), *(_stat(row[k]) for k in METRICS),
                 _warm_cell(row, "fit_seconds"), _warm_cell(row, "infer_ms_per_image"),
                 _stat(row["peak_rss_mb"], 0),
                 _stat(row["model_mb"], 1), ",".join(str(s) for s in row["seeds"])]
        if with_paper:
            cells.append(paper)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + _warm_footnotes(rows))


def ablation_rows(records: list[dict[str, Any]], method: str, ablation) -> list[dict[str, Any]]:
    """One row per variant of ``ablation``: the paper's value, ours over seeds, the runs used."""
    from kit.experiments import variant_siblings

    siblings = variant_siblings(ablation)  # a run tagged with one label serves its whole group
    tables = defaultdict(list)
    for r in records:
        if r["method"] == method and r["ablation"] == ablation.name:
            for label in sorted({s for v in r["variants"] for s in siblings.get(v, [v])}):
                tables[label].append(r)
    # variants read from another table's run (e.g. CLS-CNFs Table 1's FE_CLS); variants that
    # share a run (maps of one model) are each listed in its ``variants`` tag
    shared = {}
    for v in ablation.variants:
        if v.source is not None:
            other, label = v.source
            shared[v.label] = [r for r in records if r["method"] == method
                               and r["ablation"] == other and label in r["variants"]]
    rows = []
    for v in ablation.variants:
        rs = shared.get(v.label, tables.get(v.label, []))
        values = [variant_value(r, v, ablation.metric) for r in rs]
        rows.append({"variant": v.label, "paper": v.paper_value, "values": values,
                     "ours": mean_known(values), "runs": len([x for x in values if x is not None]),
                     "overrides": v.overrides, "map": v.map, "records": rs,
                     "n_train": [r.get("n_train") for r in rs]})
    return rows


def _settings(v_overrides: dict[str, Any], v_map: str | None) -> str:
    parts = [f"{k}={json.dumps(_plain(val))}" for k, val in sorted(v_overrides.items())]
    if v_map:
        parts.append(f"map {v_map}")
    return ", ".join(parts) or "as configured"


def ablation_markdown(rows: list[dict[str, Any]], ablation,
                      metrics: Iterable[str] | None = None) -> str:
    """:func:`ablation_rows` (one row per variant, in ``ablation.variants``' order) as a
    Markdown table: per variant the paper's value of the table's metric, ours (mean ± spread over seeds) in each of ``metrics`` (default:
    ``ablation.columns``), the runs and the settings."""
    metrics = list(metrics or ablation.columns)
    paper = METRIC_NAMES.get(ablation.metric, ablation.metric)
    lines = [f"| variant | paper ({ablation.paper_dataset}), {paper} | "
             + " | ".join(f"ours, {METRIC_NAMES.get(m, m)}" for m in metrics) + " | runs | settings |",
             "|---|---|" + "---|" * len(metrics) + "---|---|"]
    for v, row in zip(ablation.variants, rows):
        ours = [_stat_of_some([variant_value(r, v, m) for r in row["records"]]) for m in metrics]
        lines.append(f"| {v.label} | {'-' if v.paper_value is None else f'{v.paper_value:.3f}'} | "
                     + " | ".join(ours) + f" | {row['runs']} | {_settings(row['overrides'], row['map'])} |")
    return "\n".join(lines)


def choices_markdown(records: list[dict[str, Any]], methods: list[str], budgets: set[str]) -> str:
    """Which split each choice used: the threshold (from the runs) and each budget's notes."""
    from kit.method import method_class

    lines = []
    for name in methods:
        rs = [r for r in records if r["method"] == name]
        if not rs:
            continue
        paper = method_class(name).paper
        sources = sorted({r.get("threshold_source") or "-" for r in rs})
        lines.append(f"- **`{name}`**: threshold from {', '.join(sources)} (never the test split).")
        for budget in sorted(budgets, key=lambda b: (b != "quick", b)):
            note = paper.budget_notes.get(budget)
            if note and any(r["budget"] == budget for r in rs):
                lines.append(f"  - {budget} budget: {note}")
    return "\n".join(lines)


def reference_command(record: dict[str, Any]) -> str:
    """The command that makes a record's run again (from the project folder)."""
    data = {"mtd": "", "sample": " --data-root kit/sample"}.get(record["data"],
                                                                f" --data-root <{record['data']}>")
    return (f"python -m kit bench --methods {record['method']} --categories {record['category']}"
            f"{data} --budget {record['budget']} --seeds {record['seed']}")


def reference_records(path: Path | str | None = None) -> list[dict[str, Any]]:
    """The committed result data (:data:`RESULTS_FILE`), ``[]`` when it is missing or broken:
    the dashboard shows it as reference results, never instead of an error in the user's runs."""
    try:
        return load_results(path or RESULTS_FILE)
    except (OSError, ValueError):
        return []


def _made_when(records: Iterable[dict[str, Any]]) -> str:
    """``"2026-12-05 to 2026-12-07"``: the dates the records' runs were made."""
    dates = sorted(r["created"][:10] for r in records if r.get("created"))
    if not dates:
        return "at an unrecorded date"
    return f"{dates[0]} to {dates[-1]}" if dates[0] != dates[-1] else dates[0]


def reference_ablation(records: list[dict[str, Any]], method: str, ablation,
                       category: str | None = None, budget: str | None = None,
                       data: str | None = None) -> dict[str, Any] | None:
    """The reference results of one paper table: ``{"group": Group,
    "values": {variant: [value per seed]}, "points": {variant: [(n_train, value)]},
    "caption": what made them and when}``; None when the data has none. Prefers the first
    group of ``data``, ``category`` and ``budget`` (the user's runs; None matches any), else the
    first (real data, full budget, no extra settings)."""
    candidates = []
    for group, rs in _groups(records):
        rows = ablation_rows(rs, method, ablation)
        if any(row["runs"] for row in rows):
            candidates.append((group, rs, rows))
    if not candidates:
        return None
    def fits(group: Group) -> bool:  # None: any
        return ((category is None or group.category == category)
                and (budget is None or group.budget == budget)
                and (data is None or group.data == data))

    group, rs, rows = next((c for c in candidates if fits(c[0])), candidates[0])
    used = {r["run"]: r for row in rows for r in row["records"]}.values()
    commands = sorted({reference_command(r) for r in used})
    caption = ("Reference results (docs/results/runs.json, committed with the kit): "
               f"{group.category} from `{group.data}`, {group.budget} budget, made "
               + _made_when(used) + " by `" + "`, `".join(commands) + "`.")
    return {"group": group, "caption": caption, "rows": rows,
            "values": {row["variant"]: [v for v in row["values"] if v is not None] for row in rows},
            "points": {row["variant"]: [(n, v) for n, v in zip(row["n_train"], row["values"])
                                        if n is not None and v is not None] for row in rows}}


def reference_markdown(method: str, ablation_name: str, metrics: Iterable[str] | None = None,
                       path: Path | str | None = None, budget: str | None = None) -> str:
    """One paper table's reference results as Markdown, for the notebooks (which, at their
    quick setting, run a few variants on the embedded sample and show these for the rest):
    the caption saying what made them, then a row per variant with the paper's value and ours
    (mean ± spread over seeds) in each of ``metrics`` (default: ``ablation.columns``), from the
    runs at ``budget`` where there are some (default: the full budget's, else any)."""
    from kit.method import method_class

    ablation = method_class(method).paper.ablation(ablation_name)
    reference = reference_ablation(reference_records(path), method, ablation, budget=budget)
    if reference is None or budget not in (None, reference["group"].budget):
        at = f" at the {budget} budget" if budget else ""
        return (f"No reference results for {method} {ablation_name}{at} in the committed result "
                f"data yet: `python -m kit bench --methods {method}"
                + (f" --budget {budget}" if budget else "") + "` then `python -m kit report` make them.")
    return reference["caption"] + "\n\n" + ablation_markdown(reference["rows"], ablation, metrics)


def reference_method_markdown(method: str, path: Path | str | None = None) -> str:
    """``method``'s default-settings reference runs as Markdown, for the notebooks: one table
    per budget on real data with plain settings (:func:`methods_markdown`: metrics and costs
    over seeds, the paper's value on that data), each under what made it."""
    parts = []
    for group, rs, rows in real_data_tables(reference_records(path), [method]):
        if group.extra != "{}":
            continue
        used = list(newest_defaults([r for r in rs if r["method"] == method]).values())
        command = (reference_command(used[0]).rsplit(" --seeds", 1)[0] + " --no-ablations"
                   " --seeds " + " ".join(str(seed) for seed in rows[0]["seeds"]))
        parts.append(f"**{_group_title(group, rs)}**, made {_made_when(used)} by "
                     f"`{command}`:\n\n" + methods_markdown(rows))
    if not parts:
        return (f"No reference runs of {method} on real data in the committed result data yet: "
                f"`python -m kit bench --methods {method} --no-ablations` then "
                "`python -m kit report` make them.")
    return ("Reference results (docs/results/runs.json, committed with the kit; "
            "`python -m kit report` writes them from runs):\n\n" + "\n\n".join(parts))


def reference_cost(records: list[dict[str, Any]], method: str, budget: str = "full"
                   ) -> dict[str, Any] | None:
    """What one run of ``method`` at ``budget`` costs and how far its seeds disagree: its newest
    default-settings record per seed in the first group on real data with plain settings that
    has one (:func:`_groups`' order: MTD first). ``{"group": Group, "records": [record per
    seed]}``; None when there is none."""
    for group, rs in _groups(records):
        if group.data == "sample" or group.budget != budget or group.extra != "{}":
            continue
        newest = newest_defaults([r for r in rs if r["method"] == method], key=lambda r: r["seed"])
        if newest:
            return {"group": group, "records": [newest[seed] for seed in sorted(newest)]}
    return None


def _span(values: list[float], digits: int = 0) -> str:
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if round(low, digits) == round(high, digits) else \
        f"{low:.{digits}f}-{high:.{digits}f}"


def reference_cost_markdown(method: str, budget: str = "full", path: Path | str | None = None
                            ) -> str:
    """A paragraph for the notebooks, before the cell that trains at ``budget``: what one run
    of ``method`` took (fit time, peak memory) in the committed reference runs, and how far
    its image AUROC moved between seeds, so a learner does not read one run as the method's
    result (:func:`reference_cost`)."""
    seeds_command = f"python -m kit bench --methods {method} --budget {budget} --seeds 0 1 2"
    reference = reference_cost(reference_records(path), method, budget)
    if reference is None:
        return (f"No reference runs of {method} at the {budget} budget in the committed result "
                f"data yet: `{seeds_command}` then `python -m kit report` make them.")
    group, rs = reference["group"], reference["records"]
    seconds = [r["fit_seconds"] for r in rs if r.get("fit_seconds")]
    peaks = [max(r.get("fit_peak_rss_mb") or 0, r.get("score_peak_rss_mb") or 0) / 1024 for r in rs]
    peaks = [p for p in peaks if p]
    aurocs = {r["seed"]: r["image_auroc"] for r in rs if r.get("image_auroc") is not None}
    warm = any(is_warm(r.get("cached_fit_share")) for r in rs)
    facts = []
    if seconds:
        took = (f"{_span(seconds)} s" if max(seconds) < 120 else
                f"{_span([t / 60 for t in seconds])} min")
        facts.append(f"a fit took {took}" + (" (some with a warm feature cache)" if warm else ""))
    if peaks:
        facts.append(f"a run peaked at {max(peaks):.1f} GB of memory")
    if aurocs:
        facts.append(f"the image AUROC was {_stat(list(aurocs.values()))} ("
                     + ", ".join(f"seed {seed}: {v:.3f}" for seed, v in aurocs.items()) + ")")
    text = (f"**One {budget}-budget run of `{method}`**, from its reference runs "
            f"(docs/results/runs.json: {group.category} from `{group.data}`, {len(rs)} "
            f"seed{'s' if len(rs) > 1 else ''}, made {_made_when(rs)} on "
            f"{_most_common([r.get('device') for r in rs])}): " + (", ".join(facts) or
                                                                   "no costs recorded") + ".")
    if len(aurocs) == 1:
        return text + " With one seed, how far another seed moves the result is not known yet."
    if len(aurocs) > 1:
        spread = max(aurocs.values()) - min(aurocs.values())
        text += (f" The seed alone moved the image AUROC by {spread:.3f}: a single run can land "
                 "anywhere in such a range, so compare the mean over seeds with the paper "
                 f"(`{seeds_command}`).")
    return text


def paper_curve_points(paper: dict[str, float | None],
                       sizes: dict[str, list[Any]]) -> list[tuple[float, float]]:
    """The paper's points of a curve ablation (DifferNet's Fig. 7): each variant's paper value
    (``paper``: variant -> value) at the training-set size its runs used (``sizes``: variant ->
    the runs' ``n_train``; the most common wins); a variant with no run has no x, so no point."""
    points = []
    for label, value in paper.items():
        xs = [x for x in sizes.get(label, []) if x is not None]
        if value is not None and xs:
            points.append((float(_most_common(xs)), value))
    return points


def _most_common(values: list[Any]) -> Any:
    values = [v for v in values if v is not None]
    return max(sorted(set(values), key=str), key=values.count) if values else "?"


def _group_title(group: Group, records: list[dict[str, Any]]) -> str:
    """The data, its split sizes (of the default runs where there are some: an ablation may
    train on fewer images), the budget and any extra settings."""
    base = [r for r in records if r.get("default")] or records
    fit = sorted({r.get("n_train") for r in base if r.get("n_train") is not None})
    # methods' budgets may cap the fit images (max_train_images): a range, each in its table
    fit_text = (f"{fit[0]}-{fit[-1]} fit" if len(fit) > 1
                else f"{_most_common([r.get('n_train') for r in base])} fit")
    counts = " / ".join([fit_text] + [f"{_most_common([r.get(k) for r in base])} {what}"
                                      for k, what in (("n_val", "held-out"),
                                                      ("n_test", "test images"))])
    extra = json.loads(group.extra)
    settings = ("; extra settings " + ", ".join(f"{k}={json.dumps(v)}" for k, v in extra.items())
                if extra else "")
    return (f"{group.category} from `{group.data}` ({counts}, data {group.fingerprint or '?'}), "
            f"{group.budget} budget{settings}")


def _main_group(records: list[dict[str, Any]]) -> tuple[Group | None, list[dict[str, Any]]]:
    """The group on real data with plain settings whose default runs cover the most methods,
    the first of equals (MTD's first, the full budget before the quick one): a full budget run
    for a few methods does not replace the table of every method in notebook 05 and the
    reference views (the README shows every group)."""
    best, most = (None, []), (False, 0)
    for group, rs in _groups(records):
        if group.data != "sample":
            # plain settings first, then the most methods
            rank = (group.extra == "{}", len({r["method"] for r in default_records(rs)}))
            if rank[1] and rank > most:
                best, most = (group, rs), rank
    return best


def main_methods(records: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """``(title, rows)``: :func:`methods_table` of :func:`_main_group`, ``("", [])`` when there
    is none."""
    from kit.method import load_methods

    group, rs = _main_group(records)
    rows = methods_table(rs, sorted(load_methods())) if group else []
    return (_group_title(group, rs), rows) if rows else ("", [])


def main_defects(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`defect_rows` of :func:`_main_group` (``([], [])`` when its runs have none)."""
    from kit.method import load_methods

    group, rs = _main_group(records)
    return defect_rows(rs, sorted(load_methods())) if group else ([], [])


def main_methods_plot(records: list[dict[str, Any]], kind: str = "methods") -> Path:
    """The report's plot of :func:`main_methods`' group: ``kind`` "methods" (the bars of every
    method) or "defects" (per defect type); ``docs/report/<kind>-*.png``, which may not exist
    yet: ``python -m kit report`` draws it."""
    group, _ = _main_group(records)
    return PLOTS_DIR / (f"{kind}-{group.slug}.png" if group else f"{kind}.png")


def takeaways(rows: list[dict[str, Any]]) -> str:
    """Markdown bullets read off :func:`methods_table` rows: the ranking in each metric and the
    cost of each method against the cheapest. Generated, so they follow the data."""
    lines = []
    for metric in ("image_auroc", "pixel_auroc", "aupro"):
        ranked = sorted(((mean_known(row[metric]), row["method"]) for row in rows
                         if mean_known(row[metric]) is not None), reverse=True)
        if ranked:
            lines.append(f"- **{METRIC_NAMES[metric]}**, best first: "
                         + ", ".join(f"`{name}` {value:.3f}" for value, name in ranked) + ".")
    for key, what in (("infer_ms_per_image", "inference"), ("fit_seconds", "fit time")):
        costs = sorted(((mean_known(row[key]), row["method"]) for row in rows
                        if mean_known(row[key]) is not None))
        if len(costs) > 1 and costs[0][0] > 0:
            cheapest = costs[0][0]
            warm = {row["method"] for row in rows if warm_share(row, WARM_NOTES[key][1])}
            mark = lambda name: " (warm: features from the cache)" if name in warm else ""  # noqa: E731
            lines.append(f"- **{what}** against the cheapest (`{costs[0][1]}`{mark(costs[0][1])}): "
                         + ", ".join(f"`{name}` x{value / cheapest:.1f}{mark(name)}"
                                     for value, name in costs[1:]) + ".")
    return "\n".join(lines)


def load_speed(path: Path | str | None = None) -> list[dict[str, Any]]:
    """The speed data (:data:`SPEED_FILE`), ``[]`` when there is none."""
    return _load_list(Path(path or SPEED_FILE), "measurements", lambda r: "ratio" in r)


def speed_markdown(speed: list[dict[str, Any]]) -> str:
    lines = ["| method | budget | backbone, size | bare backbone ms | method ms | ratio | "
             f"<= {OVERHEAD_TARGET}x | threads | load before -> after | measured |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    inside = [r for r in speed if r.get("backbones_ratio") is not None]
    if inside:
        lines[0] += " inside backbone forwards: ms (forwards per call); the method's ratio to them |"
        lines[1] += "---|"
    counted = [r for r in speed if r.get("flop_ratio") is not None or r.get("flops_error")]
    if counted:
        lines[0] += " GFLOP per image (x the bare forward's) |"
        lines[1] += "---|"
    compiled = [r for r in speed if r.get("compiled_ms") is not None or r.get("compile_error")]
    if compiled:
        lines[0] += (" torch.compile ms (faster by; compile s; images to pay it back; largest rel. "
                     "difference) |")
        lines[1] += "---|"
    exported = [r for r in speed if r.get("onnx_ms") is not None or r.get("onnx_error")]
    if exported:
        lines[0] += (" ONNX Runtime ms (faster by; its bare backbone ms, ratio; largest rel. "
                     "difference) |")
        lines[1] += "---|"
    batched = [r for r in speed if r.get("batch_ms")]
    if batched:
        lines[0] += (" scoring ms/image by batch size ("
                     + ("ratio to the bare backbone at that size; "
                        if any(r.get("batch_ratio") for r in batched) else "")
                     + "the kit's default in bold) |")
        lines[1] += "---|"
    techniques = [r for r in speed if r.get("other_layout_ms") is not None]
    if techniques:
        lines[0] += (" at the other thread count: threads, ms (the table's threads faster by; "
                     "bare backbone ms, ratio) | backbones in the other memory layout: layout, ms "
                     "(the method's own layout faster by; largest rel. difference) |")
        lines[1] += "---|---|"
    for r in sorted(speed, key=lambda r: (r["budget"] != "quick", r["budget"], r["method"])):
        line = (f"| `{r['method']}` | {r['budget']} | {r['backbone']}, {r['image_size']} px | "
                f"{r['bare_ms']:.1f} | {r['method_ms']:.1f} | x{r['ratio']:.2f} | "
                f"{'yes' if r['ratio'] <= OVERHEAD_TARGET else 'no'} | {r['threads']} | "
                f"{r['load_before']:.2f} -> {r['load_after']:.2f} | {r['created'][:10]} |")
        if inside:
            line += (f" {r['backbones_ms']:.1f} ({r['backbone_forwards']}); "
                     f"x{r['backbones_ratio']:.2f} |" if r.get("backbones_ratio") is not None
                     else " - |")
        if counted:
            line += (f" {r['gflops']:.2f} (x{r['flop_ratio']:.2f}) |" if r.get("flop_ratio") is not None
                     else f" not counted: {r['flops_error']} |" if r.get("flops_error") else " - |")
        if compiled:
            saved = r["method_ms"] - r["compiled_ms"] if r.get("compiled_ms") is not None else 0
            payback = f"{1000 * r['compile_s'] / saved:.0f}" if saved > 0 else "never"
            line += (f" {r['compiled_ms']:.1f} (x{r['compiled_speedup']:.2f}; {r['compile_s']:.0f} s;"
                     f" {payback}; {r['compiled_max_rel_diff']:.0e}) |" if r.get("compiled_ms") is not None
                     else f" failed: {r['compile_error']} |" if r.get("compile_error") else " - |")
        if exported:
            line += (f" {r['onnx_ms']:.1f} (x{r['onnx_speedup']:.2f}; {r['onnx_bare_ms']:.1f}, "
                     f"x{r['onnx_ratio']:.2f}; {r['onnx_max_rel_diff']:.0e}) |"
                     if r.get("onnx_ms") is not None
                     else f" failed: {r['onnx_error']} |" if r.get("onnx_error") else " - |")
        if batched:
            by_size = sorted(r["batch_ms"].items(), key=lambda item: int(item[0]))  # JSON keys
            default = _default_batch(r)
            ratios = r.get("batch_ratio") or {}

            def cell(b: str, ms: float) -> str:
                text = f"{b}: {ms:.1f}" + (f" (x{ratios[b]:.2f})" if b in ratios else "")
                return f"**{text}**" if int(b) == default else text

            line += (" " + ", ".join(cell(b, ms) for b, ms in by_size)
                     + " |" if r.get("batch_ms") else " - |")
        if techniques:
            line += (f" {r['other_threads']}, {r['other_threads_ms']:.1f} (x{r['threads_speedup']:.2f}; "
                     f"{r['other_threads_bare_ms']:.1f}, x{r['other_threads_ratio']:.2f}) | "
                     f"{r['other_layout']}, {r['other_layout_ms']:.1f} (x{r['layout_speedup']:.2f}; "
                     f"{r['other_layout_max_rel_diff']:.0e}) |"
                     if r.get("other_layout_ms") is not None else " - | - |")
        lines.append(line)
    return "\n".join(lines)


def _default_batch(row: dict[str, Any]) -> int | None:
    """The ``batch_size`` a new run of the row's method takes now (the measured run's own where
    the method is not registered here)."""
    from kit.method import load_methods

    cls = load_methods().get(row["method"])
    return (cls.config_cls.for_budget(row["budget"]).batch_size if cls is not None
            else row.get("batch_size"))


def collect_grids(runs_root: Path | str) -> list[dict[str, Any]]:
    """The grids ``kit bench`` logged under ``runs_root`` that made every one of their runs
    (none skipped, none failed), so their wall time is what the grid costs; the data roots
    become :func:`data_label` names (no machine paths in the committed data)."""
    from kit.grid import read_grid_log

    return [{**{k: v for k, v in r.items() if k != "data_root"},
             "data": [data_label(root) for root in r.get("data_root", [])]}
            for r in read_grid_log(runs_root)
            if r.get("made") and not r.get("skipped") and not r.get("failed")]


def load_grids(path: Path | str | None = None) -> list[dict[str, Any]]:
    """The collected grids (:data:`GRID_FILE`), ``[]`` when there are none."""
    return _load_list(Path(path or GRID_FILE), "grid records",
                      lambda r: {"created", "seconds", "runs", "whole"} <= set(r))


def merge_grids(old: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per grid (its start time and data), oldest first."""
    merged = {(r["created"], tuple(r.get("fingerprints", []))): r for r in [*old, *new]}
    return [merged[k] for k in sorted(merged)]


def grid_markdown(grids: list[dict[str, Any]]) -> str:
    """The grids' wall time beside the sum of their runs' own seconds."""
    lines = ["| begun | commit | budget | data | runs (methods) | every method and variant | workers x "
             "threads | wall min | runs' own min | feature cache empty before | load before -> "
             f"after | whole quick grid <= {GRID_TARGET_MINUTES} min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in grids:
        quick_whole = r["whole"] and r.get("budget") == ["quick"]
        target = ("yes" if r["seconds"] <= 60 * GRID_TARGET_MINUTES else "no") if quick_whole else "-"
        load = " -> ".join("-" if v is None else f"{v:.2f}"
                           for v in (r.get("load_before"), r.get("load_after")))
        lines.append(
            f"| {r['created'][:16].replace('T', ' ')} | {r.get('commit') or '-'} | "
            f"{', '.join(r.get('budget', []))} | "
            f"{', '.join(r.get('data', []))} ({', '.join(r.get('categories', []))}) | "
            f"{r['runs']} ({len(r.get('methods', []))}) | {'yes' if r['whole'] else 'no'} | "
            f"{r.get('workers') or '-'} x {r.get('threads')} | {r['seconds'] / 60:.1f} | "
            f"{r.get('run_seconds', 0) / 60:.1f} | "
            f"{'yes' if r.get('feature_cache_empty') else 'no'} | {load} | {target} |")
    return "\n".join(lines)


def load_backbones(path: Path | str | None = None) -> list[dict[str, Any]]:
    """The backbone measurements (:data:`BACKBONES_FILE`), ``[]`` when there are none."""
    return _load_list(Path(path or BACKBONES_FILE), "measurements",
                      lambda r: {"model", "gflops", "ms_per_image", "channels_last"} <= set(r))


def _speedup(rows: list[dict[str, Any]], model: str, slow: dict, fast: dict) -> str:
    """``x(ms of the slow setting / ms of the fast one)`` for ``model``, ``-`` if not measured."""
    def ms(setting):
        hit = [r["ms_per_image"] for r in rows if r["model"] == model
               and all(r[k] == v for k, v in setting.items())]
        return hit[0] if hit else None
    a, b = ms(slow), ms(fast)
    return f"x{a / b:.2f}" if a and b else "-"


def backbones_markdown(rows: list[dict[str, Any]]) -> str:
    """Each backbone's FLOPs against its measured throughput, per setting, then what each
    technique gives as a ratio of times (above 1: the technique is faster)."""
    lines = ["| backbone, size | GFLOPs/image | params M | batch | threads | channels-last | "
             "ms/image | images/s | GFLOP/s | CPU ms/image |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(rows, key=lambda r: (r["gflops"], r["model"], r["batch"], r["threads"],
                                        r["channels_last"]))
    for r in order:
        lines.append(f"| {r['model']}, {r['image_size']} px | {r['gflops']:.2f} | "
                     f"{r['params_m']:.1f} | {r['batch']} | {r['threads']} | "
                     f"{'yes' if r['channels_last'] else 'no'} | {r['ms_per_image']:.1f} | "
                     f"{r['img_per_s']:.1f} | {r['gflop_per_s']:.1f} | {r['cpu_ms_per_image']:.1f} |")
    threads = sorted({r["threads"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    t_hi, b_lo, b_hi = threads[-1], batches[0], batches[-1]
    lines += ["", f"| backbone | channels-last vs not (batch {b_lo}, {t_hi} threads) | "
                  f"{t_hi} threads vs {threads[0]} (batch {b_lo}, channels-last) | "
                  f"batch {b_hi} vs {b_lo} per image ({t_hi} threads, channels-last) |",
              "|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in order):
        lines.append(
            f"| {model} | "
            + _speedup(rows, model, dict(batch=b_lo, threads=t_hi, channels_last=False),
                       dict(batch=b_lo, threads=t_hi, channels_last=True)) + " | "
            + _speedup(rows, model, dict(batch=b_lo, threads=threads[0], channels_last=True),
                       dict(batch=b_lo, threads=t_hi, channels_last=True)) + " | "
            + _speedup(rows, model, dict(batch=b_lo, threads=t_hi, channels_last=True),
                       dict(batch=b_hi, threads=t_hi, channels_last=True)) + " |")
    loads = [r["load_before"] for r in rows] + [r["load_after"] for r in rows]
    lines += ["", f"Load average {min(loads):.2f} to {max(loads):.2f} while measured; "
                  f"{rows[0]['created'][:10]}, torch {rows[0]['torch']}."]
    return "\n".join(lines)


def load_peer(path: Path | str | None = None) -> list[dict[str, Any]]:
    """The peer comparison's rows (:data:`PEER_FILE`), ``[]`` when there are none."""
    return _load_list(Path(path or PEER_FILE), "comparisons",
                      lambda r: {"ours", "anomalib_side", "speedup"} <= set(r))


def _pair(ours: float | None, theirs: float | None) -> str:
    """``ours / theirs`` with the better one in bold (ties: neither)."""
    if ours is None or theirs is None:
        return f"{_stat([ours])} / {_stat([theirs])}"
    a, b = f"{ours:.3f}", f"{theirs:.3f}"
    if a != b:
        a, b = (f"**{a}**", b) if ours > theirs else (a, f"**{b}**")
    return f"{a} / {b}"


def peer_markdown(rows: list[dict[str, Any]]) -> str:
    """The table of ``benchmarks/peer_anomalib.py``'s rows: each metric as ``ours / anomalib``
    (the better in bold), fit seconds, batch-1 inference against the bare backbone, and whether
    ours is at least as accurate on every metric and :data:`PEER_SPEEDUP_TARGET` x faster."""
    lines = ["| method vs anomalib | data, budget | backbone, size, fit / test images | "
             + " | ".join(f"{METRIC_NAMES[m]} ours / anomalib" for m in METRICS)
             + " | fit s ours / anomalib | ms/image bare / ours / anomalib | anomalib / ours "
             "| as accurate, 2x faster? | load before -> after | measured |",
             "|---|---|---|" + "---|" * len(METRICS) + "---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["data"], r["category"], r["budget"], r["method"])):
        o, p = r["ours"], r["anomalib_side"]
        accurate = all(o[m] is None or p[m] is None or round(o[m], 3) >= round(p[m], 3)
                       for m in METRICS)
        fast = r["speedup"] >= PEER_SPEEDUP_TARGET
        lines.append(
            f"| `{r['method']}` vs `{r['peer']}` {r['anomalib']} | {r['category']} ({r['data']}), "
            f"{r['budget']} | {r['backbone']}, {r['image_size']} px, {r['n_fit']} / {r['n_test']} | "
            + " | ".join(_pair(o[m], p[m]) for m in METRICS)
            + f" | {o['fit_seconds']:.0f} / {p['fit_seconds']:.0f} | {r['bare_ms']:.1f} / "
            f"{o['ms']:.1f} / {p['ms']:.1f} | x{r['speedup']:.2f} | "
            f"{'yes' if accurate else 'no'}, {'yes' if fast else 'no'} | "
            f"{r['load_before']:.2f} -> {r['load_after']:.2f} | {r['created'][:10]} |")
    workarounds = sorted({w for r in rows for w in r.get("workarounds", [])})
    if workarounds:
        lines += ["", "What anomalib needed here, done by the script for every row:", ""]
        lines += [f"- {w}" for w in workarounds]
    return "\n".join(lines)


def render_report(records: list[dict[str, Any]], results_name: str = "docs/results/runs.json",
                  plots_dir: str = "report", speed: list[dict[str, Any]] | None = None,
                  peer: list[dict[str, Any]] | None = None,
                  backbones: list[dict[str, Any]] | None = None,
                  grids: list[dict[str, Any]] | None = None) -> tuple[str, dict[str, Any]]:
    """``(markdown, plots)``: the report's text and ``{file name: figure spec}`` for
    :func:`draw_plots`. Pure: the same records give the same text."""
    from kit.method import load_methods

    methods = sorted(load_methods())
    dates = sorted(r["created"] for r in records if r.get("created"))
    out = ["# Reproduction report", "",
           f"Generated by `python -m kit report` from `{results_name}` ({len(records)} runs"
           + (f", made {dates[0][:10]} to {dates[-1][:10]}" if dates else "") + "). Do not edit: "
           "`python -m kit report` rewrites it, and `tests/test_report.py` fails when it differs "
           "from the data. Runs: `python -m kit bench` (see the README). Spread = max - min "
           "over seeds. Thresholds, weights and budgets never used the test split unless a "
           "budget note below says so.", ""]
    plots: dict[str, Any] = {}
    for group, rs in _groups(records):
        out += [f"## {_group_title(group, rs)}", ""]
        rows = methods_table(rs, methods)
        label = f"{group.category} ({group.data}), {group.budget}"
        if rows:
            out += ["### Every method, default settings", "", methods_markdown(rows), ""]
            name = f"methods-{group.slug}.png"
            plots[name] = {"kind": "methods", "rows": rows, "title": f"{label} budget"}
            out += [f"![every method, {label}]({plots_dir}/{name})", ""]
        types, drows = defect_rows(rs, methods)
        if drows:
            out += ["### Every method, per defect type", "",
                    "Each defect type scored against all normal test images (the pooled value "
                    "ranks every defect pixel together, so types with large masks weigh most). "
                    "Pixel AUROC:", "", defect_markdown(types, drows), "",
                    "Image AUROC (the type's images against the normal ones):", "",
                    defect_markdown(types, drows, "image_auroc"), ""]
            name = f"defects-{group.slug}.png"
            plots[name] = {"kind": "defects", "rows": drows, "types": types,
                           "metric": "pixel_auroc", "title": f"pixel AUROC per defect type, {label}"}
            out += [f"![per defect type, {label}]({plots_dir}/{name})", ""]
        for method in methods:
            cls = load_methods()[method]
            for ablation in cls.paper.ablations:
                arows = ablation_rows(rs, method, ablation)
                if not any(row["runs"] for row in arows):
                    continue
                out += [f"### `{method}`: {ablation.title}", "", ablation_markdown(arows, ablation), ""]
                if ablation.note:
                    out += [f"{ablation.note}", ""]
                name = _slug(f"{method}-{ablation.name}-{group.slug}") + ".png"
                plots[name] = {"kind": ablation.plot, "rows": arows, "metric": ablation.metric,
                               "title": f"{method} {ablation.name}, {label}"}
                out += [f"![{method} {ablation.name}]({plots_dir}/{name})", ""]
    if speed:
        out += ["## Inference against the bare backbone", "",
                "`benchmarks/bench_methods.py` (data: `docs/results/speed.json`): each method's "
                "`predict` on one image (every map it returns) against the bare forward of its "
                "backbone through the deepest stage it reads, same size, batch 1, on the CPU, "
                "timed interleaved in one process; median of the repeats. The ratio is the "
                "method's own overhead."
                + (" The bare backbone runs as every method runs a frozen backbone without "
                   "autograd on the CPU: through ONNX Runtime (`kit/ort.py`, about twice as fast "
                   "as eager PyTorch here, `benchmarks/bench_ort.py`), so the ratio counts the "
                   "method's own work against that faster forward."
                   if any(r.get("backbone_runtime") == "onnxruntime" for r in speed) else "")
                + (" Some methods run more than that one forward by design: a second CNN "
                   "(B-PFM's target network), several views (DifferNet's transforms), an encoder "
                   "after a decoder. So the time `predict` spends inside backbone forwards, every "
                   "CNN it runs, is measured beside it (a separate pass of the same calls), and "
                   "the method's ratio to that time: what the method adds beyond its CNNs "
                   "(flows, mappings, heads, and any backward pass through a backbone)."
                   if any(r.get("backbones_ratio") is not None for r in speed) else "")
                + (" The operations `predict` computes are counted too (PyTorch's FLOP formulas: "
                   "matrix products and convolutions, any backward pass included, element-wise "
                   "work not), against the bare forward's: the ratio the method would have if its "
                   "own work ran as fast per operation as the backbone. Where that is above the "
                   f"{OVERHEAD_TARGET}x target, the method computes too much beyond its backbone for "
                   "the target to be met at the paper's settings, unless its own work ran faster "
                   "per operation than the backbone's forward; where it is below and the timed "
                   "ratio is above, the cost is in how the work runs (memory traffic, small "
                   "operations)."
                   if any(r.get("flop_ratio") is not None for r in speed) else "")
                + (" With `--compile`, the same `predict` under `torch.compile` (inductor) is timed "
                   "beside them: its speed-up over eager, the seconds its first call took (in one "
                   "process with an empty inductor cache; methods compiled later reuse a shared "
                   "backbone's kernels), and the largest difference of its maps and scores from "
                   "eager, relative to the largest value. The kit runs eager: a run scores a test "
                   "split once, so the compile time is paid for every run."
                   if any(r.get("compiled_ms") is not None or r.get("compile_error")
                          for r in speed) else "")
                + (" With `--batches`, the same `predict` scores 16 test images in pieces of "
                   "each batch size, as a run scores its test split: ms per image, the `batch_size` "
                   "a new run takes in bold"
                   + (", and its ratio to the bare backbone over the same pieces (timed "
                      "interleaved with it)" if any(r.get("batch_ratio") for r in speed) else "")
                   + "."
                   if any(r.get("batch_ms") for r in speed) else "")
                + (" With `--techniques`, the same `predict` and bare forward at the other thread "
                   "count (1 where the table's is 2), alternating every repeat with `predict` at "
                   "the table's count, which the speed-up is measured against, and `predict` with "
                   "the method's backbones "
                   "in the other memory layout (channels-last where the method runs PyTorch's "
                   "default NCHW, and the reverse); a speed-up below 1 means the other layout "
                   "is faster."
                   if any(r.get("other_layout_ms") is not None for r in speed) else "")
                + (" With `--onnx`, `predict` exported by `python -m kit onnx`'s exporter "
                   "(`kit.deploy`) and the bare backbone exported the same way, each run by ONNX "
                   "Runtime with the same threads: the method's speed-up over eager, the bare "
                   "backbone in ONNX Runtime and the method's ratio to it (its overhead inside "
                   "that runtime), and the largest difference from eager. A run scores with "
                   "the method's own code around its backbones (in ONNX Runtime where they are "
                   "frozen); the whole exported graph is the deployment path (`python -m kit onnx "
                   "RUN`, then `kit.deploy.OnnxPredictor`)."
                   if any(r.get("onnx_ms") is not None or r.get("onnx_error") for r in speed)
                   else ""),
                "", speed_markdown(speed), ""]
        for budget in sorted({r["budget"] for r in speed}):
            split = [r for r in speed if r["budget"] == budget
                     and r.get("backbones_ratio") is not None]
            if split:
                name = f"speed-{_slug(budget)}.png"
                plots[name] = {"kind": "speed", "rows": split, "target": OVERHEAD_TARGET,
                               "title": f"where predict's time goes, {budget} budget"}
                out += [f"![where predict's time goes, {budget}]({plots_dir}/{name})", ""]
    if backbones:
        out += ["## Backbones: throughput against FLOPs, and what the techniques give", "",
                "`benchmarks/bench_backbones.py` (data: `docs/results/backbones.json`): every "
                f"offline backbone through stages {backbones[0]['layers']}, FLOPs counted by "
                "`torch.utils.flop_counter` on one image, each setting timed interleaved with the "
                "others (median ms per image). Every method runs its backbone channels-last.", "",
                backbones_markdown(backbones), ""]
    if peer:
        out += ["## Against anomalib", "",
                "`benchmarks/peer_anomalib.py` (data: `docs/results/peer.json`): our method's run "
                "beside anomalib's model trained in the same process on the same fit images, with "
                "the same ImageNet weights, layers and image size, both scored by `kit.metrics` "
                "on the same test images. Inference: batch 1, timed interleaved with the bare "
                "backbone forward; median of the repeats. anomalib scores the test set in batches "
                "of 32, and its CFlow map depends on the batch (it subtracts the batch's maximum); "
                "ours does not.", "", peer_markdown(peer), ""]
    if grids:
        out += ["## What the grid costs", "",
                "`python -m kit bench` logs every grid it runs (`grid_log.jsonl` in the runs "
                "root); `python -m kit report` keeps those that made all of their runs (data: "
                "`docs/results/grid.json`). Wall time is the whole command after planning: the "
                "Dask cluster, every fit, scoring, metrics and writing each run. The runs' own "
                "minutes add up each job's time on its worker. A grid begun with an empty "
                "feature cache pays every backbone forward that DifferNet's variants share.",
                "", grid_markdown(grids), ""]
    budgets = {r["budget"] for r in records}
    if records:
        out += ["## Which split each choice used", "", choices_markdown(records, methods, budgets), ""]
    return "\n".join(out).rstrip() + "\n", plots


def readme_table(records: list[dict[str, Any]]) -> str:
    """The README's results table: every method's default run on the real data (MTD)."""
    from kit.method import load_methods

    methods = sorted(load_methods())
    parts = [README_BEGIN, ""]
    shown = False
    for group, rs, rows in real_data_tables(records, methods):
        shown = True
        parts += [f"**{_group_title(group, rs)}**", "",
                  methods_markdown(rows, with_paper=False), ""]
        types, drows = defect_rows(rs, methods)
        if drows:
            parts += ["Pixel AUROC per defect type (each against the normal images):", "",
                      defect_markdown(types, drows), ""]
    if not shown:
        parts += ["No results on real data yet: `python -m kit bench` makes them.", ""]
    parts += ["Every paper table beside ours, and which split each choice used: "
              "[docs/report.md](docs/report.md).", "", README_END]
    return "\n".join(parts)


def replace_readme_table(readme: str, table: str) -> str:
    """``readme`` with the text between the markers (inclusive) replaced by ``table``."""
    begin = readme.find(README_BEGIN)
    end = readme.find(README_END, begin + 1) if begin >= 0 else -1
    if begin < 0 or end < begin:
        raise ValueError(f"README.md: the markers {README_BEGIN!r} ... {README_END!r} are missing")
    return readme[:begin] + table + readme[end + len(README_END):]


def draw_plots(plots: dict[str, Any], folder: Path | str) -> list[Path]:
    """Write each plot of :func:`render_report` as a PNG in ``folder``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from kit.plots import (report_ablation_bars, report_ablation_curve, report_defect_bars,
                           report_methods_bars, report_speed_bars)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for old in folder.glob("*.png"):  # plots of groups gone; only names this function writes
        if old.name not in plots and _PLOT_NAME.fullmatch(old.name) and old.is_file() \
                and not old.is_symlink():
            old.unlink()
    for name, spec in sorted(plots.items()):
        if not _PLOT_NAME.fullmatch(name) or (folder / name).resolve().parent != folder.resolve():
            raise ValueError(f"plot name {name!r} is not a plain file name")
        fig, ax = plt.subplots(figsize=(10 if spec["kind"] == "defects" else 7, 3.2), dpi=100)
        if spec["kind"] == "methods":
            report_methods_bars(ax, spec["rows"])
        elif spec["kind"] == "defects":
            report_defect_bars(ax, spec["rows"], spec["types"], spec["metric"])
        elif spec["kind"] == "curve":
            report_ablation_curve(ax, spec["rows"], spec["metric"])
        elif spec["kind"] == "speed":
            report_speed_bars(ax, spec["rows"], spec["target"])
        else:
            report_ablation_bars(ax, spec["rows"], spec["metric"])
        ax.set_title(spec["title"], fontsize=10)
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, metadata={"Software": None})
        plt.close(fig)
        written.append(path)
    return written


_PLOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.png")


def write_report(runs_root: Path | str | None, results: Path | str = RESULTS_FILE,
                 report: Path | str = REPORT_FILE, readme: Path | str | None = README_FILE,
                 tagged_only: bool = True, plots: bool = True) -> dict[str, Any]:
    """Collect (when ``runs_root`` is given), merge, write the data, the report and the README
    table. Returns ``{"records": n, "new": n, "files": [...], "skipped": [message, ...]}``."""
    results, report = Path(results), Path(report)
    old = load_results(results)
    new, skipped = collect_with_skips(runs_root, tagged_only) if runs_root is not None else ([], [])
    records = merge(old, new)
    results.parent.mkdir(parents=True, exist_ok=True)
    data = results_files(records)
    results.write_text(data["runs.json"])
    results.with_suffix(".csv").write_text(data["runs.csv"])
    files = [results, results.with_suffix(".csv")]
    grids_file = results.with_name(GRID_FILE.name)
    grids = merge_grids(load_grids(grids_file),
                        collect_grids(runs_root) if runs_root is not None else [])
    if grids:
        grids_file.write_text(json.dumps(grids, indent=1, sort_keys=True) + "\n")
        files.append(grids_file)
    plots_dir = report.parent / report.stem
    text, specs = render_report(records, _rel(results, report.parent), plots_dir.name,
                                speed=load_speed(results.with_name("speed.json")),
                                peer=load_peer(results.with_name("peer.json")),
                                backbones=load_backbones(results.with_name("backbones.json")),
                                grids=grids)
    report.write_text(text)
    files.append(report)
    if plots:
        files += draw_plots(specs, plots_dir)
    if readme is not None:
        readme = Path(readme)
        readme.write_text(replace_readme_table(readme.read_text(), readme_table(records)))
        files.append(readme)
    return {"records": len(records), "new": len(new), "files": files, "skipped": skipped}


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT.resolve()))
    except ValueError:
        return path.name
