"""Run folders for the dashboard tests and benchmark (plain functions, no pytest magic).

- :func:`toy_runs`: two PaDiM runs on a generated toy dataset with an untrained backbone at
  64 px (a few seconds), for AppTest.
- :func:`sample_runs`: a real PaDiM run on the embedded MTD sample (ImageNet Lite0 weights,
  128 px) and a cheap untrained-backbone one beside it, for the browser test.
- :func:`broken_run` / :func:`moved_run`: the failure cases the app must survive.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # the benchmark imports this file from outside pytest
    sys.path.insert(0, str(TESTS))

from conftest import make_toy_dataset  # noqa: E402

from kit.paths import DEFAULT_CATEGORY, SAMPLE_ROOT  # noqa: E402
from kit.pipeline import run_experiment  # noqa: E402

TOY = {"weights": "none", "image_size": 64}


def toy_runs(base: Path) -> dict[str, Path]:
    """``{"data": data root, "runs": runs root, "a": run, "b": run}`` under ``base``."""
    data = make_toy_dataset(base / "data", n_train=30, n_good=6, n_defect=6)
    runs = base / "runs"
    a = run_experiment("padim", data, "toy", runs / "padim_toy_a", overrides=TOY, progress=False)
    b = run_experiment("padim", data, "toy", runs / "padim_toy_b",
                       overrides={**TOY, "n_features": 40, "blur_sigma": 2.0}, progress=False)
    return {"data": data, "runs": runs, "a": a, "b": b}


def sample_runs(runs: Path) -> dict[str, Path]:
    """Real runs on the embedded MTD sample: PaDiM with ImageNet Lite0 weights at 128 px
    (~45 s on 2 busy cores; 256 px takes 4x longer) and an untrained-backbone one at 64 px."""
    real = run_experiment("padim", SAMPLE_ROOT, DEFAULT_CATEGORY, runs / "padim_lite0_128",
                          overrides={"image_size": 128}, progress=False)
    untrained = run_experiment("padim", SAMPLE_ROOT, DEFAULT_CATEGORY, runs / "padim_untrained_64",
                               overrides={"weights": "none", "image_size": 64}, progress=False)
    return {"runs": runs, "real": real, "untrained": untrained}


def broken_run(runs: Path, name: str = "broken_run") -> Path:
    """A folder that looks like a run but lacks most files (an interrupted copy)."""
    path = runs / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"method": "padim"}))
    return path


def moved_run(run: Path, runs: Path, name: str = "moved_data_run") -> Path:
    """A copy of ``run`` whose dataset 'moved away': its data root and image paths are gone."""
    dst = runs / name
    shutil.copytree(run, dst)
    config = json.loads((dst / "config.json").read_text())
    old = config["data_root"]
    config["data_root"] = "/nonexistent/moved/data"
    (dst / "config.json").write_text(json.dumps(config))
    scores = (dst / "scores.csv").read_text().replace(old, "/nonexistent/moved/data")
    (dst / "scores.csv").write_text(scores)
    return dst
