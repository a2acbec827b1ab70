"""Runs know their data: an ablation sweep on one dataset never reuses, overwrites or averages
in a run of the same variant on another (the embedded sample vs the full MTD)."""

from __future__ import annotations

import json

import pytest

from conftest import make_toy_dataset
from fixtures_runs import tiny_overrides
from kit.data import dataset_fingerprint
from kit.experiments import ablation_table, run_ablation
from kit.pipeline import run_is_current
from kit.runstore import list_runs, load_run


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """A 'sample' and a 'full' stand-in: the same category name, different files."""
    small = make_toy_dataset(tmp_path_factory.mktemp("sample") / "data", n_train=12, seed=0)
    large = make_toy_dataset(tmp_path_factory.mktemp("full") / "data", n_train=20, seed=1)
    return small, large


def test_fingerprints_tell_datasets_apart(two_datasets, tmp_path):
    small, large = two_datasets
    assert dataset_fingerprint(small, "toy") == dataset_fingerprint(small, "toy")
    assert dataset_fingerprint(small, "toy") != dataset_fingerprint(large, "toy")
    copy = make_toy_dataset(tmp_path / "copy", n_train=12, seed=0)  # same files elsewhere
    assert dataset_fingerprint(copy, "toy") == dataset_fingerprint(small, "toy")


def test_sweeps_on_two_datasets_in_one_runs_root_never_mix(two_datasets, tmp_path):
    small, large = two_datasets
    root = tmp_path / "runs"
    sweep = dict(variants=["A"], extra_overrides=tiny_overrides("differnet"), progress=False)
    (on_small,) = run_ablation("differnet", "table3", small, "toy", root, **sweep)
    (on_large,) = run_ablation("differnet", "table3", large, "toy", root, **sweep)
    assert on_small != on_large and sorted(r.path for r in list_runs(root)[0]) == sorted(
        [on_small, on_large])  # neither overwrote the other
    fp_small, fp_large = dataset_fingerprint(small, "toy"), dataset_fingerprint(large, "toy")
    overrides = {**tiny_overrides("differnet"), **{"scales": "single", "rotation": "uniform",
                                                   "train_transforms": False, "n_test_transforms": 1}}
    assert run_is_current(on_small, "differnet", "quick", 0, overrides, fp_small)
    assert not run_is_current(on_small, "differnet", "quick", 0, overrides, fp_large)

    stamp = on_small.stat().st_mtime_ns
    run_ablation("differnet", "table3", small, "toy", root, **sweep)  # resumes: nothing refitted
    assert on_small.stat().st_mtime_ns == stamp

    for data, run in ((small, on_small), (large, on_large)):
        (row,) = [r for r in ablation_table(root, "differnet", "table3", data_root=data,
                                            category="toy", budget="quick") if r["variant"] == "A"]
        assert row["runs"] == 1 and row["ours"] == load_run(run).metrics["image_auroc"]
    other_budget = ablation_table(root, "differnet", "table3", data_root=small, category="toy",
                                  budget="full")
    assert all(r["runs"] == 0 for r in other_budget)


def test_a_variant_run_serves_every_variant_that_shares_it(two_datasets, tmp_path):
    """Table 5's NF is a map of the n = 2 run: asking for n = 2 alone tags the run for both, and
    a run tagged for one of them (an older sweep) still counts for the other."""
    small, _ = two_datasets
    root = tmp_path / "runs"
    (path,) = run_ablation("nf_bmr", "table5", small, "toy", root, variants=["n=2"],
                           extra_overrides=tiny_overrides("nf_bmr"), progress=False)
    run = load_run(path)
    assert set(run.config["tags"]["variants"]) == {"n=2", "NF"}
    rows = {r["variant"]: r for r in ablation_table(root, "nf_bmr", "table5", data_root=small,
                                                    category="toy", budget="quick")}
    assert rows["NF"]["runs"] == rows["n=2"]["runs"] == 1 and rows["n=1"]["runs"] == 0
    assert rows["NF"]["ours"] == run.metrics["maps"]["NF"]["image_auroc"]
    assert rows["n=2"]["ours"] == run.metrics["image_auroc"]
    config = run.config  # an older sweep's run, tagged for n=2 only
    config["tags"] = {"ablation": "table5", "variant": "n=2"}
    (path / "config.json").write_text(json.dumps(config))
    rows = {r["variant"]: r for r in ablation_table(root, "nf_bmr", "table5", data_root=small,
                                                    category="toy", budget="quick")}
    assert rows["NF"]["runs"] == 1


def test_one_failing_variant_does_not_stop_the_others(two_datasets, tmp_path, monkeypatch, capsys):
    """`kit ablation` runs every variant even when one fails (memory, a bad setting), names the
    failure at once and again below the table, and exits 1; run_ablation without on_failure
    still raises."""
    import kit.experiments
    from kit.cli import main

    small, _ = two_datasets
    fitted = []

    def fake_fit(method, data_root, category, targets, *args):
        labels = [t.tags["variant"] for t in targets]
        fitted.append(labels)
        if "n=1" in labels:
            raise MemoryError("made up for the test")

    monkeypatch.setattr(kit.experiments, "fit_or_reuse_shared", fake_fit)
    code = main(["ablation", "nf_bmr", "table5", "--data-root", str(small), "--category", "toy",
                 "--runs-root", str(tmp_path / "runs"), "--quiet"])
    assert code == 1
    groups = kit.experiments.variant_groups([v for v in kit.experiments.find_ablation(
        "nf_bmr", "table5").variants if v.source is None])
    assert len(fitted) == len(groups) > 2 and fitted[0] == ["n=1"]  # the rest ran after it
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0] == err[1]
    assert err[0].startswith("failed: n=1: ") and err[0].endswith("MemoryError: made up for the test")
    with pytest.raises(MemoryError):
        run_ablation("nf_bmr", "table5", small, "toy", tmp_path / "runs", progress=False)
