"""Methods side by side (``kit.compare``, notebook 05's helpers), with every registered method:
one default run each, reused the second time; the images every run scored; one map row per
run on its own scale."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import make_toy_dataset
from fixtures_runs import tiny_overrides
from kit import compare, report
from kit.data import find_category
from kit.method import load_methods

TINY_ALL = {name: tiny_overrides(name) for name in load_methods()}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("compare")
    data = make_toy_dataset(base / "data", n_train=16, n_good=3, n_defect=3)
    runs = compare.default_runs(base / "runs", data, "toy", progress=False, extra_overrides=TINY_ALL)
    return {"data": data, "root": base / "runs", "runs": runs}


def test_one_default_run_per_method_reused_the_second_time(made):
    runs = made["runs"]
    assert [r.method for r in runs] == sorted(load_methods())
    for run in runs:
        record = report.run_record(run)
        assert record["default"], f"{run.name}: not the method's default settings"
    stamps = {r.name: os.stat(r.path / "metrics.json").st_mtime_ns for r in runs}
    again = compare.default_runs(made["root"], made["data"], "toy", progress=False,
                                 extra_overrides=TINY_ALL)
    assert {r.name: os.stat(r.path / "metrics.json").st_mtime_ns for r in again} == stamps
    rows = report.methods_table([report.run_record(r) for r in runs], sorted(load_methods()))
    assert [row["method"] for row in rows] == sorted(load_methods())


def test_same_images_one_row_per_method(made):
    runs = made["runs"]
    names = compare.shared_images(runs)
    category = find_category(made["data"], "toy")
    assert names == [s.name for s in category.test]  # the same split in every run
    picked = compare.pick_images(runs[0], names)
    labels = {row["name"]: row["label"] for row in runs[0].scores}
    assert [labels[n] for n in picked] == [1, 0]  # one defect type in the toy data, then a normal
    shown = compare.side_by_side(runs, picked, category, size=24)
    assert list(shown["rows"]) == [r.method for r in runs]
    for maps, scale in shown["rows"].values():
        assert [m.shape for m in maps] == [(24, 24)] * 2 and scale.vmax > scale.vmin
    assert shown["images"][0].shape == (24, 24, 3) and 0 <= shown["images"][0].min() <= shown["images"][0].max() <= 1
    assert shown["masks"][0].any() and not shown["masks"][1].any()
    assert shown["titles"][1] == "good"
    # a run's own map, picked by the image's index in that run's scores
    first = runs[0]
    index = {row["name"]: row["index"] for row in first.scores}[picked[0]]
    own = shown["rows"][first.method][0][0]
    assert np.allclose(own, compare.resize_map(first.maps[index].astype("float32"), 24))


def test_runs_of_other_data_share_no_images(made, tmp_path):
    other = make_toy_dataset(tmp_path / "other", n_train=12, n_good=2, n_defect=2, seed=1)
    category = find_category(other, "toy")
    with pytest.raises(ValueError, match="other data"):
        compare.side_by_side(made["runs"][:1], ["nope/missing.png"], category)
    assert compare.shared_images([]) == []
