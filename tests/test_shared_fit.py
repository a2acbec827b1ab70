"""Runs that differ only in scoring settings share one fit (kit.pipeline.run_experiments), and
each such run is exactly the run fitted alone: the check behind every method's
``MethodConfig.SCORING`` list, so a field that the fit does read cannot hide there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures_runs import tiny_overrides
from conftest import make_toy_dataset
from kit.experiments import run_ablation
from kit.grid import fit_groups, plan_grid
from kit.method import load_methods, method_class
from kit.pipeline import RunTarget, fit_settings, run_experiment, run_experiments

# Per method, a value other than the tiny run's for every field of its SCORING list. A method
# that adds a scoring field needs a value here (test_every_scoring_field_is_checked).
SCORING_VALUES = {"threshold_quantile": 0.9}
METHOD_SCORING_VALUES = {
    "differnet": {"n_test_transforms": 3, "transform_seed": 5, "score": "z2",
                  "n_map_transforms": 2, "map_sigma": 1.5},
}
TIMING = ("fit_seconds", "infer_ms_per_image", "fit_peak_rss_mb", "score_peak_rss_mb")


def scoring_values(method: str) -> dict:
    return {**SCORING_VALUES, **METHOD_SCORING_VALUES.get(method, {})}


def results(run: Path) -> tuple[dict, list[str]]:
    """A run's metrics without its timings, and its scores.csv lines."""
    metrics = json.loads((run / "metrics.json").read_text())
    for key in TIMING:
        metrics.pop(key)
    return metrics, (run / "scores.csv").read_text().splitlines()


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("shared") / "data", n_train=24, n_good=5,
                            n_defect=5)


@pytest.mark.parametrize("method", sorted(load_methods()))
def test_every_scoring_field_is_checked(method):
    listed = set(method_class(method).config_cls.SCORING)
    assert listed <= set(scoring_values(method)), (
        f"{method}: give the new scoring field(s) {sorted(listed - set(scoring_values(method)))} "
        "a value in SCORING_VALUES / METHOD_SCORING_VALUES")
    assert fit_settings(method, "quick", 0, scoring_values(method)) == fit_settings(method, "quick", 0)


@pytest.mark.parametrize("method", sorted(load_methods()))
def test_a_shared_fit_gives_the_runs_fitted_alone(method, toy, tmp_path):
    """Two runs from one fit (the second with every scoring setting changed) equal two runs
    fitted one by one: the same metrics, scores and maps."""
    tiny = tiny_overrides(method)
    changed = {**tiny, **scoring_values(method)}
    first, second = run_experiments(
        method, toy, "toy", [RunTarget(tmp_path / "a", tiny), RunTarget(tmp_path / "b", changed)],
        progress=False)
    alone = run_experiment(method, toy, "toy", tmp_path / "b_alone", overrides=changed,
                           progress=False)
    assert results(second) == results(alone)
    assert results(first) != results(second)  # the scoring settings did change something
    with np.load(second / "maps.npz") as shared, np.load(alone / "maps.npz") as lone:
        assert sorted(shared.files) == sorted(lone.files)
        for key in shared.files:
            np.testing.assert_array_equal(shared[key], lone[key])
    config = json.loads((second / "config.json").read_text())
    assert config["fit_shared_with"] == ["a"]
    assert config["overrides"] == json.loads(json.dumps(changed))


def test_runs_that_change_the_fit_are_refused(toy, tmp_path):
    tiny = tiny_overrides("padim")
    with pytest.raises(ValueError, match="change the fit"):
        run_experiments("padim", toy, "toy", [RunTarget(tmp_path / "a", tiny),
                                               RunTarget(tmp_path / "b", {**tiny, "n_features": 40})],
                        progress=False)
    assert not (tmp_path / "a").exists()  # refused before anything was written


def test_the_grid_and_the_ablation_share_differnet_table3_fits(toy, tmp_path):
    jobs = plan_grid(tmp_path / "runs", toy, ["toy"], methods=["differnet"],
                     extra_overrides={"differnet": tiny_overrides("differnet")})
    variants = [[job.variants for job in group] for group in fit_groups(jobs)]
    # D-G differ only in the number of test transforms: one fit. B is the budget's own
    # single-scale model with 64 test transforms, so it shares the fit of Fig. 7's "all" (every
    # training image, the budget's test transforms). A and C each have their own; the other
    # training-size runs each see other images.
    assert [("D",), ("E",), ("F",), ("G",)] in variants
    assert [("B",), ("all",)] in variants
    assert [("A",)] in variants and [("C",)] in variants
    assert len(variants) == 4 + 5

    paths = run_ablation("differnet", "table3", toy, "toy", tmp_path / "runs",
                         variants=["D", "E"], extra_overrides=tiny_overrides("differnet"),
                         progress=False)
    assert [p.name.split("-")[2] for p in paths] == ["D", "E"]
    configs = [json.loads((p / "config.json").read_text()) for p in paths]
    assert configs[0]["fit_shared_with"] == [paths[1].name]
    assert configs[0]["train_log"] == configs[1]["train_log"]
