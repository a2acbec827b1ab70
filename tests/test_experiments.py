"""Runs know their data: an ablation sweep on one dataset never reuses, overwrites or averages
in a run of the same variant on another (the embedded sample vs the full MTD)."""

from __future__ import annotations

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
