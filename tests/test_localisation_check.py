"""scripts/localisation_check.py: pooled against per-image pixel AUROC of a run's stored maps."""

from __future__ import annotations

import json
import sys

import pytest

from fixtures_runs import tiny_overrides
from kit.compare import localisation
from kit.data import find_category
from kit.paths import REPO_ROOT
from kit.pipeline import run_experiment
from kit.runstore import load_run

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import localisation_check  # noqa: E402


def test_every_map_of_a_run_is_checked_and_appended_as_one_line(tmp_path, capsys):
    from conftest import make_toy_dataset

    data = make_toy_dataset(tmp_path / "data")
    run_dir = run_experiment("ndp_net", data, "toy", tmp_path / "runs" / "ndp", progress=False,
                             overrides={**tiny_overrides("ndp_net"), "table6_maps": True})
    out = tmp_path / "check.jsonl"
    out.write_text('{"earlier": 1}\n')  # appended to, never replaced
    assert localisation_check.main([str(run_dir), "--out", str(out), "--no-progress"]) == 0
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": 1} and len(lines) == 2
    row = json.loads(lines[1])
    run = load_run(run_dir)
    assert row["run"] == run.name and row["method"] == "ndp_net"
    assert set(row["maps"]) == {"primary", *run.map_names} and len(row["maps"]) > 4
    # scored again at full size: the pooled value of the primary map is the run's own metric
    assert row["maps"]["primary"]["pooled"] == pytest.approx(run.metrics["pixel_auroc"], abs=1e-4)
    assert all(0 <= v["per_image"] <= 1 for v in row["maps"].values())
    assert row["n_defective"] == sum(s.label for s in find_category(data, "toy").test) > 0
    assert row["map_size"] == run.metrics["image_size"]
    # what the run recorded (read without scoring again) agrees with the check's re-scoring
    recorded = localisation(run_dir)
    assert set(recorded) == set(row["maps"])
    for name, values in recorded.items():
        assert values == pytest.approx(row["maps"][name], abs=1e-4), name
    assert "per image" in capsys.readouterr().out
