"""The generated report (``python -m kit report``): the committed report and README table are
what the committed result data generates; collecting and merging runs; the dashboard's
reference results."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import make_toy_dataset
from fixtures_runs import tiny_overrides
from kit import plots, report
from kit.experiments import run_ablation
from kit.method import load_methods
from kit.paths import REPO_ROOT
from kit.pipeline import run_experiment

APP = str(REPO_ROOT / "app.py")


# ---------------------------------------------------------------- the committed files

def committed_records() -> list[dict]:
    records = report.load_results(report.RESULTS_FILE)
    assert records, f"{report.RESULTS_FILE} holds no runs: python -m kit bench --report"
    return records


def test_committed_report_is_what_the_committed_data_generates():
    records = committed_records()
    text, plots = report.render_report(records, speed=report.load_speed(), peer=report.load_peer(),
                                        backbones=report.load_backbones(), grids=report.load_grids())
    assert report.REPORT_FILE.read_text() == text, (
        "docs/report.md differs from what docs/results/runs.json generates: do not edit it by "
        "hand; run `python -m kit report --no-collect` and commit the result")
    for name in plots:
        assert (report.PLOTS_DIR / name).is_file(), f"docs/report/{name} missing: python -m kit report"
    readme = report.README_FILE.read_text()
    assert report.replace_readme_table(readme, report.readme_table(records)) == readme, (
        "README.md's results table differs from the data: python -m kit report --no-collect")


def test_committed_data_is_in_canonical_form_and_sane():
    records = committed_records()
    files = report.results_files(records)
    assert report.RESULTS_FILE.read_text() == files["runs.json"], "runs.json: python -m kit report"
    assert report.RESULTS_FILE.with_suffix(".csv").read_text() == files["runs.csv"]
    methods = load_methods()
    for r in records:
        assert r["method"] in methods, r["run"]
        for key in report.METRICS:
            assert r[key] is None or 0.0 <= r[key] <= 1.0, (r["run"], key)
        assert r["fit_seconds"] > 0 and r["created"], r["run"]
        assert "/" not in r["data"], "a record must not hold this machine's paths"
    assert len({report.record_key(r) for r in records}) == len(records)


def test_report_axes_start_at_chance():
    from kit.plots import metric_axis_start

    assert metric_axis_start([0.93, 0.97]) == 0.5
    assert metric_axis_start([0.47, 0.9]) == pytest.approx(0.3)
    assert metric_axis_start([None]) == 0.5
    assert metric_axis_start([0.3, 0.4], "pixel_aupr") == 0.0  # AUPR's chance is not 0.5


# ---------------------------------------------------------------- toy runs, end to end

@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("report")
    data = make_toy_dataset(base / "data", n_train=16, n_good=3, n_defect=3)
    runs = base / "runs"
    run_experiment("padim", data, "toy", runs / "padim-default", overrides=tiny_overrides("padim"),
                   tags={"ablation": "default"}, progress=False)
    run_experiment("padim", data, "toy", runs / "padim-untagged",
                   overrides=tiny_overrides("padim"), progress=False)
    run_ablation("nf_bmr", "table5", data, "toy", runs, extra_overrides=tiny_overrides("nf_bmr"),
                 variants=["n=1", "n=2"], progress=False)
    run_ablation("differnet", "train_size", data, "toy", runs, variants=["n16", "all"],
                 extra_overrides=tiny_overrides("differnet"), progress=False)
    return {"data": data, "runs": runs, "base": base}


def report_paths(base: Path) -> dict[str, Path]:
    out = base / "out"
    out.mkdir(parents=True, exist_ok=True)
    readme = out / "README.md"
    if not readme.exists():
        readme.write_text(f"# x\n\nbefore\n\n{report.README_BEGIN}\nold\n{report.README_END}\n\nafter\n")
    return {"results": out / "results" / "runs.json", "report": out / "report.md", "readme": readme}


def test_report_from_runs_is_complete_and_repeatable(toy):
    paths = report_paths(toy["base"] / "a")
    done = report.write_report(toy["runs"], **paths)
    assert done["records"] == done["new"] == 5  # the untagged run is not collected
    records = report.load_results(paths["results"])
    assert {r["method"] for r in records} == {"padim", "nf_bmr", "differnet"}
    text = paths["report"].read_text()
    assert "| `padim` |" in text and "| `differnet` |" in text and "| `nf_bmr` |" in text
    assert "Table 5" in text and "| n=1 | 0.974 |" in text
    columns = load_methods()["nf_bmr"].paper.ablation("table5").columns
    assert columns[0] == "image_auroc" and columns[-3:] == ("precision", "recall", "f1")
    assert "| n=3 | 0.985 | " + "- | " * len(columns) + "0 |" in text  # every metric, no run
    header = next(line for line in text.splitlines() if line.startswith("| variant | paper (MVTec"))
    assert header.count("| ours, ") == len(columns) and "| ours, F1 |" in header
    assert "Fig. 7" in text
    assert "threshold from held-out normal training images" in text
    for line in text.splitlines():
        if line.startswith("!["):
            assert (paths["report"].parent / line.split("](")[1].rstrip(")")).is_file(), line
    readme = paths["readme"].read_text()
    assert readme.startswith("# x\n\nbefore\n\n") and readme.endswith("after\n")
    assert "| `padim` |" in readme and "old" not in readme
    first = {k: p.read_text() for k, p in paths.items()}
    report.write_report(toy["runs"], **paths)
    assert {k: p.read_text() for k, p in paths.items()} == first, "the report is not repeatable"
    csv_lines = paths["results"].with_suffix(".csv").read_text().splitlines()
    assert csv_lines[0].startswith("run,method,data") and len(csv_lines) == 6


def test_records_keep_each_maps_per_image_pixel_auroc_and_say_when_runs_lack_it(toy):
    """The per-image pixel AUROC (recorded by every run with masks, primary and named maps) is
    in the result data; a table over runs of which some predate it says how many it covers."""
    records = report.collect(toy["runs"])
    n2 = next(r for r in records if r["method"] == "nf_bmr" and "n=2" in r["variants"])
    for values in (n2, *n2["maps"].values()):
        assert 0.0 <= values["pixel_auroc_per_image"] <= 1.0
    assert "pixel_auroc_per_image" in report.CSV_COLUMNS
    table5 = load_methods()["nf_bmr"].paper.ablation("table5")
    old = {k: v for k, v in n2.items() if k != "pixel_auroc_per_image"}  # a run from before
    rows = report.ablation_rows([n2, {**old, "run": "older", "seed": 1}], "nf_bmr", table5)
    text = report.ablation_markdown(rows, table5, ["pixel_auroc_per_image", "image_auroc"])
    line = next(x for x in text.splitlines() if x.startswith("| n=2 |"))
    assert f"| {n2['pixel_auroc_per_image']:.3f} (1 of 2 runs) | " in line
    assert f"| {n2['image_auroc']:.3f} ± 0.000 | 2 |" in line  # both runs have it: no count
    table6 = load_methods()["ndp_net"].paper.ablation("table6")
    assert table6.columns[-1] == "pixel_auroc_per_image"


def test_merge_keeps_records_of_runs_gone_and_replaces_remade_ones(toy, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(toy["runs"], runs)
    paths = report_paths(tmp_path)
    report.write_report(runs, **paths)
    before = {r["run"]: r for r in report.load_results(paths["results"])}
    shutil.rmtree(runs / "padim-default")  # a run folder lost (another machine, a clean clone)
    run_experiment("padim", toy["data"], "toy", runs / "padim-remade",
                   overrides=tiny_overrides("padim"), tags={"ablation": "default"}, progress=False)
    report.write_report(runs, **paths)
    after = {r["run"]: r for r in report.load_results(paths["results"])}
    assert len(after) == len(before)  # same experiment: the re-made run replaced the old record
    assert "padim-remade" in after and "padim-default" not in after
    report.write_report(None, **paths)  # re-render only
    assert {r["run"] for r in report.load_results(paths["results"])} == set(after)


def test_grids_made_from_scratch_are_collected_with_their_wall_time(tmp_path):
    """A grid that made all its runs is kept (its wall time is the grid's cost); one that skipped
    or lost runs, and a half-written line, are not; machine paths become data labels."""
    import json

    from kit.grid import GRID_LOG

    runs, data = tmp_path / "runs", tmp_path / "elsewhere" / "mtd"
    line = {"created": "2026-12-06T21:21:00", "budget": ["quick"], "data_root": [str(data)],
            "categories": ["magnetic_tile"], "fingerprints": ["c7cce437"], "whole": True,
            "methods": sorted(load_methods()), "runs": 27, "made": 27, "skipped": 0, "failed": 0,
            "seconds": 1900.0, "run_seconds": 1800.0, "workers": 1, "threads": 2,
            "load_before": 0.9, "load_after": 2.1, "feature_cache_empty": True}
    partial = {**line, "created": "2026-12-06T23:00:00", "made": 3, "skipped": 24, "whole": False}
    runs.mkdir()
    (runs / GRID_LOG).write_text(json.dumps(line) + "\n" + json.dumps(partial) + "\n{\"created\n")
    grids = report.collect_grids(runs)
    assert len(grids) == 1 and grids[0]["data"] == ["mtd"] and "data_root" not in grids[0]
    assert str(tmp_path) not in json.dumps(grids)
    assert report.merge_grids(grids, grids) == grids
    rows = report.grid_markdown(grids).splitlines()
    assert len(rows) == 3 and rows[-1].endswith("| 31.7 | 30.0 | yes | 0.90 -> 2.10 | no |")
    assert rows[-1].startswith("| 2026-12-06 21:21 | - | quick |")  # logged before commits were
    assert report.grid_markdown([{**grids[0], "commit": "0ef6b579631d"}]).splitlines()[-1] \
        .startswith("| 2026-12-06 21:21 | 0ef6b579631d | quick |")
    fast = {**grids[0], "seconds": 1500.0}
    assert report.grid_markdown([fast]).endswith("| yes |")  # within the 30 minutes
    assert report.grid_markdown([{**fast, "whole": False}]).endswith("| - |")  # not the target's grid
    paths = report_paths(tmp_path / "out")
    done = report.write_report(runs, **paths)
    grid_file = paths["results"].with_name("grid.json")
    assert grid_file in done["files"] and report.load_grids(grid_file) == grids
    assert "## What the grid costs" in paths["report"].read_text()
    report.write_report(None, **paths)  # re-rendering keeps the collected grid
    assert report.load_grids(grid_file) == grids


def test_broken_result_data_is_named(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="runs.json"):
        report.load_results(path)
    assert report.reference_records(path) == []  # the dashboard shows nothing instead of failing


def test_reference_ablation_prefers_the_users_group(toy):
    records = report.collect(toy["runs"])
    ablation = load_methods()["nf_bmr"].paper.ablation("table5")
    ref = report.reference_ablation(records, "nf_bmr", ablation, "toy", "quick")
    assert (ref["group"].data, ref["group"].category, ref["group"].budget) == ("data", "toy", "quick")
    assert len(ref["values"]["n=2"]) == 1 and ref["values"]["NF"]  # NF: a map of n=2's run
    assert ref["values"]["n=3"] == []
    assert "python -m kit bench --methods nf_bmr" in ref["caption"]
    table6 = load_methods()["ndp_net"].paper.ablation("table6")
    assert report.reference_ablation(records, "ndp_net", table6) is None  # no such runs



def test_reference_markdown_for_the_notebooks(toy, tmp_path):
    """The notebooks' reference tables: one row per variant, ours in each metric asked for, a
    dash (and 0 runs) where the data has no run, a pointer to the command where it has none."""
    path = tmp_path / "runs.json"
    records = report.collect(toy["runs"])
    path.write_text(report.results_files(records)["runs.json"])
    text = report.reference_markdown("nf_bmr", "table5", ["image_auroc", "aupro"], path=path)
    lines = text.splitlines()
    assert "python -m kit bench --methods nf_bmr" in lines[0]
    assert lines[2].count("| ours, ") == 2
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in lines[4:]}
    assert set(rows) == {v.label for v in load_methods()["nf_bmr"].paper.ablation("table5").variants}
    n2 = next(r for r in records if "n=2" in r["variants"])
    assert rows["n=2"][2] == f"{n2['image_auroc']:.3f}" and rows["n=2"][4] == "1"
    assert rows["n=3"][2:5] == ["-", "-", "0"]
    assert "python -m kit bench --methods ndp_net" in report.reference_markdown("ndp_net", "table6", path=path)


# ---------------------------------------------------------------- the dashboard

@pytest.fixture
def reference(toy, tmp_path, monkeypatch):
    """The toy records as the committed reference data, and an empty runs root."""
    data = tmp_path / "runs.json"
    data.write_text(report.results_files(report.collect(toy["runs"]))["runs.json"])
    monkeypatch.setattr(report, "RESULTS_FILE", data)
    empty = tmp_path / "empty-runs"
    empty.mkdir()
    monkeypatch.setenv("KIT_RUNS_ROOT", str(empty))
    monkeypatch.setenv("KIT_DATA_ROOT", str(toy["data"]))
    return data


def start(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90).run()
    at.switch_page(f"kit/app/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_ablations_page_shows_reference_results_without_runs(reference):
    at = start("ablations")
    captions = "\n".join(c.value for c in at.caption)
    assert "Reference results" in captions and "kit bench --methods nf_bmr" in captions
    tables = [df.value for df in at.dataframe]
    table5 = next(t for t in tables if "n=2" in set(t["variant"]))
    assert pd.notna(table5.set_index("variant").loc["n=2", "reference (mean)"])
    assert pd.isna(table5.set_index("variant").loc["n=3", "reference (mean)"])  # not made
    assert table5.set_index("variant").loc["n=2", "runs"] == "missing"


def test_curves_page_shows_reference_results_without_runs(reference):
    at = start("curves")
    assert at.expander and "Reference results" in at.expander[0].label
    table = at.dataframe[0].value
    assert set(table["method"]) == {"padim", "nf_bmr", "differnet"}
    # which times are warm: DifferNet's runs say how much of their test features the cache gave
    cached = table.groupby("method")["test views from cache"].apply(lambda c: c.notna().all())
    assert cached["differnet"] and not cached["padim"]  # empty: padim has no feature cache
    assert "No runs yet" in "\n".join(i.value for i in at.info)


def test_curves_page_opens_on_the_reference_group_with_the_most_methods():
    from kit.app.curves import reference_groups

    def rec(method, budget, data="mtd"):
        return {"data": data, "category": "magnetic_tile", "budget": budget, "method": method}

    quick = [rec(m, "quick") for m in ("padim", "cflow", "nf_bmr")]
    full = [rec(m, "full") for m in ("padim", "cflow")]
    sample = [rec(m, "quick", "sample") for m in ("padim", "cflow", "nf_bmr", "differnet")]
    groups = reference_groups(full + sample + quick)
    assert groups == [("mtd", "magnetic_tile", "quick"), ("mtd", "magnetic_tile", "full"),
                      ("sample", "magnetic_tile", "quick")]  # real data first, then most methods
    groups = reference_groups(full + [rec("nf_bmr", "full")] + quick)
    assert groups[0] == ("mtd", "magnetic_tile", "full")  # equals: the full budget first


def test_main_methods_and_takeaways_follow_the_data(toy):
    records = report.collect(toy["runs"])
    title, rows = report.main_methods(records)  # the first group (the tiny settings differ per method)
    assert title.startswith("toy from `data`") and rows
    first_group = report._groups(records)[0][1]  # groups never mix settings, so one group's rows
    assert rows == report.methods_table(first_group, sorted(load_methods()))
    rows = report.methods_table(records, sorted(load_methods()))  # every method, groups aside
    assert [row["method"] for row in rows] == ["differnet", "nf_bmr", "padim"]
    text = report.takeaways(rows)
    ranked = next(line for line in text.splitlines() if line.startswith("- **image AUROC**"))
    values = [float(part.split("` ")[1].rstrip(".")) for part in ranked.split(": ", 1)[1].split(", ")]
    assert values == sorted(values, reverse=True) and len(values) == 3
    assert "against the cheapest" in text
    assert report.main_methods([r for r in records if r["method"] == "nope"]) == ("", [])
    assert report.main_methods_plot(records).name.startswith("methods-data-toy-")
    # the same group's runs per defect type: made by the pipeline for every method
    types, drows = report.main_defects(records)
    assert [r["method"] for r in drows] == [row["method"] for row in report.main_methods(records)[1]]
    assert types and all(set(r["types"]) == {t["name"] for t in types} for r in drows)
    assert report.main_methods_plot(records, "defects").name.startswith("defects-data-toy-")


def test_defect_rows_average_seeds_and_the_markdown_names_the_largest_type():
    def record(method, seed, uneven, crack):
        return {"method": method, "seed": seed, "default": True, "created": f"2026-12-0{seed + 1}",
                "pixel_auroc": 0.8, "image_auroc": 0.9, "pixel_aupr": 0.2, "aupro": 0.7,
                "by_defect": {"uneven": {"n": 3, "pixel_share": 0.75, "pixel_auroc": uneven},
                              "crack": {"n": 5, "pixel_share": 0.25, "pixel_auroc": crack}}}

    records = [record("padim", 0, 0.70, 0.96), record("padim", 1, 0.74, 0.98),
               record("cflow", 0, 0.72, 0.95), {**record("nf_bmr", 0, 0, 0), "by_defect": {}}]
    types, rows = report.defect_rows(records, ["cflow", "nf_bmr", "padim"])
    assert [t["name"] for t in types] == ["uneven", "crack"]  # the largest share first
    assert [r["method"] for r in rows] == ["cflow", "padim"]  # no per-type data: no row
    padim = rows[1]
    assert padim["types"]["uneven"]["pixel_auroc"] == pytest.approx(0.72)  # mean over seeds
    assert padim["types"]["uneven"]["aupro"] is None
    text = report.defect_markdown(types, rows)
    assert "| `padim` | 0.800 | 0.720 | 0.970 |" in text
    assert "uneven (3 images, 75% of defect pixels)" in text
    assert "`uneven` holds 75% of the defect pixels" in text
    # uneven 0.72 (both methods) against pooled 0.8; the others: 0.95 (cflow) and 0.97 (padim)
    assert "pixel AUROC on it (0.720-0.720) differs from its pooled value by at most 0.080" in text
    assert "the median over methods and types is 0.960." in text
    # a type only another method's runs have still gets its column (None where missing)
    records.append({**record("nf_bmr", 0, 0.8, 0.9), "created": "2026-12-09", "by_defect": {
        "blowhole": {"n": 2, "pixel_share": 0.01, "pixel_auroc": 0.99}}})
    types, rows = report.defect_rows(records, ["cflow", "nf_bmr", "padim"])
    assert [t["name"] for t in types] == ["uneven", "crack", "blowhole"]
    assert [r["method"] for r in rows] == ["cflow", "nf_bmr", "padim"]
    assert rows[0]["types"]["blowhole"]["pixel_auroc"] is None
    assert "| `nf_bmr` | 0.800 | - | - | 0.990 |" in report.defect_markdown(types, rows)
    assert report.defect_rows([], ["padim"]) == ([], [])


def test_backbone_benchmark_counts_flops_and_renders_the_technique_ratios(tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import bench_backbones

    out = tmp_path / "backbones.json"
    assert bench_backbones.main(["--models", "tf_efficientnet_lite0", "--size", "64", "--batches", "1",
                                 "--batch-sizes", "1", "2", "--threads", "1", "2", "--out", str(out)]) == 0
    rows = report.load_backbones(out)
    assert len(rows) == 2 * 2 * 2  # batch sizes x threads x channels-last on/off
    # one image through all five stages: the FLOPs grow with the pixels (4x from 64 to 128 px)
    assert len({r["gflops"] for r in rows}) == 1 and rows[0]["gflops"] > 0
    model = bench_backbones.FeatureExtractor("tf_efficientnet_lite0", (0, 1, 2, 3, 4), "offline").eval()
    assert bench_backbones.gflops_per_image(model, 128) == pytest.approx(4 * rows[0]["gflops"], rel=0.02)
    for r in rows:
        # the rate from the stored FLOPs and time, rounded as the file rounds it (at 64 px on a
        # busy machine the rate is about 1 GFLOP/s, where a relative tolerance cannot absorb it)
        assert r["ms_per_image"] > 0
        assert r["gflop_per_s"] == round(r["gflops"] * 1000 / r["ms_per_image"], 1)
    text = report.backbones_markdown(rows)
    assert text.count("| tf_efficientnet_lite0, 64 px |") == 8
    ratios = text.split("| batch 2 vs 1 per image (2 threads, channels-last) |")[1]
    assert ratios.count(" x") == 3  # all three techniques measured, none shown as "-"


def test_warm_inference_times_are_labelled_as_warm(toy):
    """A run whose test features came mostly from the feature cache (DifferNet's, after another
    run of the grid with the same feature spec) keeps its measured time, marked as warm
    wherever the methods table, the takeaways or the cost figure show it."""
    assert report.cached_view_share(None) is None
    assert report.cached_view_share({"backbone_views": 10}) is None  # a method without a cache
    assert report.cached_view_share({"feature_cache_hits": 0, "backbone_views": 583}) == 0.0
    assert report.cached_view_share({"feature_cache_hits": 8745, "backbone_views": 583}) == 0.938
    assert report.cached_fit_share({"cache_hits": 2740, "cache_misses": 0}) == 1.0
    assert report.cached_fit_share({"loss": [1.0]}) is None
    assert not report.is_warm(None) and not report.is_warm(0.01) and report.is_warm(0.938)
    assert report.warm_suffix({"inference_info": {"feature_cache_hits": 8745, "backbone_views": 583}}
                              ) == " (warm: 94% of the test views from the feature cache)"
    assert report.warm_suffix({"inference_info": {"feature_cache_hits": 1, "backbone_views": 583}}) == ""
    records = report.collect(toy["runs"])
    shares = {r["method"]: (r["cached_view_share"], r["cached_fit_share"]) for r in records}
    assert shares["padim"] == (None, None)
    assert None not in shares["differnet"]  # the pipeline recorded both

    def row(method, ms, share, fit_share=None, seeds=1):
        return {"method": method, "seeds": list(range(seeds)), "backbone": "b", "image_size": 64,
                "n_train": [8] * seeds, **{k: [0.9] * seeds for k in report.METRICS},
                "fit_seconds": [10.0] * seeds, "infer_ms_per_image": [ms] * seeds,
                "cached_view_share": [share] * seeds, "cached_fit_share": [fit_share] * seeds,
                "peak_rss_mb": [100.0] * seeds, "model_mb": [1.0] * seeds, "paper": {}}

    rows = [row("padim", 20.0, None), row("differnet", 40.0, 0.938), row("cflow", 80.0, 0.001)]
    text = report.methods_markdown(rows)
    # a share at or under WARM_SHARE (a few duplicate images) is not warm
    assert "| 40 † |" in text and "| 20 |" in text and "| 80 |" in text
    assert "in these runs the feature cache served up to 94% of the test views" in text
    assert "†" not in report.methods_markdown([rows[0], rows[2]]) and "‡" not in text
    costs = next(line for line in report.takeaways(rows).splitlines() if "**inference**" in line)
    assert "`differnet` x2.0 (warm: features from the cache)" in costs
    assert "`cflow` x4.0." in costs
    fig = plots.cost_accuracy_figure(rows)
    labels = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert labels == {"padim", "differnet (warm)", "cflow"}
    # a warm fit is marked in its own column; one warm seed of two is counted
    two = row("differnet", 40.0, 0.0, 1.0, seeds=2)
    two["cached_fit_share"] = [1.0, 0.0]
    text = report.methods_markdown([two])
    assert "| 10 ± 0 ‡ | 40 ± 0 |" in text and "in 1 of these 2 runs the feature cache served up to 100%" in text
    fits = next(line for line in report.takeaways([two, rows[0]]).splitlines() if "**fit time**" in line)
    assert "(warm: features from the cache)" in fits


def test_the_main_group_is_the_one_with_the_most_methods():
    """The README's table shows the group whose default runs cover the most methods; a full
    budget run of one method comes first among equals but does not replace every method's
    quick table."""
    def record(method, budget, data="mtd"):
        return {"method": method, "budget": budget, "data": data, "category": "magnetic_tile",
                "fingerprint": "f", "extra": {}, "default": True, "seed": 0, "run": f"{method}-{budget}"}

    quick = [record("padim", "quick"), record("cflow", "quick")]
    full = [record("padim", "full")]
    sample = [record(m, "quick", "sample") for m in ("padim", "cflow", "nf_bmr")]
    group, rs = report._main_group(quick + full + sample)
    assert (group.budget, group.data) == ("quick", "mtd") and rs == quick
    full.append(record("cflow", "full"))  # equals: the full budget first
    group, rs = report._main_group(quick + full + sample)
    assert group.budget == "full" and rs == full
    # a sweep with extra settings over more methods does not replace the plain defaults
    sweep = [{**record(m, "quick"), "extra": {"image_size": 64}} for m in ("padim", "cflow", "nf_bmr")]
    group, rs = report._main_group(quick + full + sample + sweep)
    assert group.extra == "{}" and rs == full
    assert report._main_group(sweep)[1] == sweep  # when it is all there is
    assert report._main_group(sample) == (None, [])


def test_reference_cost_takes_the_newest_run_per_seed_of_plain_real_data(tmp_path):
    """The notebooks' paragraph before a full-budget cell: fit time, peak memory and the image
    AUROC of each seed's newest default run on real data with plain settings, the spread over
    seeds, and a command for more seeds; the sample, other budgets, extra settings, ablation
    variants and older records of a seed are not used."""
    def record(seed, auroc, created="2026-12-05T10:00:00", **changes):
        return {"method": "ndp_net", "budget": "full", "data": "mtd", "category": "magnetic_tile",
                "fingerprint": "f", "extra": {}, "default": True, "seed": seed, "device": "cpu",
                "run": f"r{seed}{created}", "created": created, "image_auroc": auroc,
                "fit_seconds": 1200.0 + 60 * seed, "fit_peak_rss_mb": 4096.0,
                "score_peak_rss_mb": 6144.0, **changes}

    noise = [record(0, 0.1, data="sample"), record(0, 0.2, budget="quick"),
             record(0, 0.3, extra={"image_size": 64}), record(1, 0.4, default=False),
             record(1, 0.5, created="2026-12-01T10:00:00")]
    records = noise + [record(0, 0.675), record(1, 0.773, created="2026-12-07T10:00:00")]
    reference = report.reference_cost(records, "ndp_net")
    assert [r["image_auroc"] for r in reference["records"]] == [0.675, 0.773]
    assert reference["group"].data == "mtd" and reference["group"].budget == "full"
    assert report.reference_cost(records, "cflow") is None

    path = tmp_path / "runs.json"
    path.write_text(json.dumps(records))
    text = report.reference_cost_markdown("ndp_net", path=path)
    assert "2 seeds, made 2026-12-05 to 2026-12-07 on cpu" in text
    assert "a fit took 20-21 min" in text and "peaked at 6.0 GB" in text
    assert "0.724 ± 0.098 (seed 0: 0.675, seed 1: 0.773)" in text
    assert "moved the image AUROC by 0.098" in text
    assert "python -m kit bench --methods ndp_net --budget full --seeds 0 1 2" in text
    path.write_text(json.dumps(noise[:4] + [record(0, 0.675)]))  # one seed: its spread is not known
    one = report.reference_cost_markdown("ndp_net", path=path)
    assert "1 seed," in one and "not known yet" in one and "moved" not in one
    path.write_text(json.dumps([{**record(0, 0.9), "fit_seconds": 9.4, "cached_fit_share": 1.0}]))
    assert "a fit took 9 s (some with a warm feature cache)" in report.reference_cost_markdown("ndp_net", path=path)
    path.write_text(json.dumps(noise[:3]))
    assert report.reference_cost_markdown("ndp_net", path=path).startswith("No reference runs of ndp_net")


@pytest.mark.parametrize("method", sorted(load_methods()))
def test_reference_cost_of_every_method_from_the_committed_data(method):
    """Every registered method's paragraph renders from the committed result data, with as
    many seeds as that data holds for it (notebooks 01-04 show it before their full cells)."""
    text = report.reference_cost_markdown(method)
    reference = report.reference_cost(report.reference_records(), method)
    if reference is None:
        assert text.startswith(f"No reference runs of {method}")
    else:
        n = len(reference["records"])
        assert text.startswith(f"**One full-budget run of `{method}`**")
        assert f"{n} seed{'s' if n > 1 else ''}, made" in text
        assert all(f"seed {r['seed']}: {r['image_auroc']:.3f}" in text for r in reference["records"])


def test_reference_method_tables_one_per_budget_of_plain_real_data(toy, tmp_path):
    """Notebook 01's "our numbers" section: a table per budget on real data with plain
    settings, from the newest default run of each seed, with the command that makes them; the
    sample and extra settings are left out; a method without runs says how to make them."""
    base = next(r for r in report.collect(toy["runs"]) if r["method"] == "padim")
    def record(seed, auroc, budget="full", **changes):
        return {**base, "data": "mtd", "category": "magnetic_tile", "budget": budget,
                "seed": seed, "run": f"p{seed}{budget}{auroc}", "image_auroc": auroc,
                "created": "2026-12-06T10:00:00", "extra": {}, "default": True, **changes}

    records = [record(0, 0.91), record(1, 0.93), record(0, 0.81, "quick"),
               record(0, 0.11, data="sample"), record(0, 0.12, extra={"image_size": 64}),
               record(1, 0.13, created="2026-12-01T10:00:00")]  # older than seed 1's newest
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(records))
    text = report.reference_method_markdown("padim", path=path)
    full, quick = text.split("**magnetic_tile from `mtd`")[1:]
    assert "full budget**" in full and "--budget full --no-ablations --seeds 0 1`" in full
    assert "| 0.920 ± 0.020 |" in full and "| 0,1 |" in full
    assert "quick budget**" in quick and "| 0.810 |" in quick and "--seeds 0`" in quick
    assert not any(f"{v:.3f}" in text for v in (0.11, 0.12, 0.13))
    assert report.reference_method_markdown("cflow", path=path).startswith("No reference runs of cflow")


def test_a_reference_table_at_a_budget_the_data_lacks_says_so(toy, tmp_path):
    path = tmp_path / "runs.json"
    path.write_text(report.results_files(report.collect(toy["runs"]))["runs.json"])
    quick = report.reference_markdown("nf_bmr", "table5", ["image_auroc"], path=path, budget="quick")
    assert "quick budget, made" in quick  # the toy runs' budget
    full = report.reference_markdown("nf_bmr", "table5", ["image_auroc"], path=path, budget="full")
    assert full.startswith("No reference results for nf_bmr table5 at the full budget")
    assert "--budget full` then" in full


@pytest.mark.parametrize("method", sorted(load_methods()))
def test_reference_method_tables_of_every_method_from_the_committed_data(method):
    text = report.reference_method_markdown(method)
    records = [r for r in report.reference_records() if r["method"] == method
               and r["data"] != "sample" and r.get("default") and r["extra"] == {}]
    if not records:
        assert text.startswith(f"No reference runs of {method}")
    else:
        groups = {(r["data"], r["category"], r["fingerprint"], r["budget"]) for r in records}
        assert text.count(f"| `{method}` |") == len(groups)
