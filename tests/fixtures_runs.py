"""Run folders for the dashboard tests and benchmark (plain functions, no pytest magic).

- :func:`toy_runs`: two PaDiM runs and one run of every other registered method on a
  generated toy dataset with an untrained backbone at 64 px (seconds each), for AppTest.
- :func:`sample_runs`: a real PaDiM run on the embedded MTD sample (ImageNet Lite0 weights,
  128 px) and cheap untrained-backbone runs of every registered method beside it, for the
  browser test.
- :data:`TINY` / :func:`tiny_overrides`: the settings that make each method's run take seconds.
- :func:`broken_run` / :func:`moved_run`: the failure cases the app must survive.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # the benchmark imports this file from outside pytest
    sys.path.insert(0, str(TESTS))

from conftest import make_toy_dataset  # noqa: E402

from kit.method import load_methods  # noqa: E402
from kit.paths import DEFAULT_CATEGORY, SAMPLE_ROOT  # noqa: E402
from kit.pipeline import run_experiment  # noqa: E402

TOY = {"weights": "none", "image_size": 64}
# Per registered method, the settings (on top of TOY) that make its run take seconds. Every
# registered method needs an entry, so that the dashboard tests run every page with its runs.
TINY: dict[str, dict[str, Any]] = {
    "padim": {},
    "differnet": {"scales": (64,), "epochs": 1, "hidden": 32, "n_test_transforms": 2,
                  "n_map_transforms": 1, "cache": False},  # no feature cache: nothing in .cache/
    "cflow": {"epochs": 1, "n_blocks": 2, "fiber_batch": 512},
    "cls_cnfs": {"epochs": 1, "n_blocks": 2, "fiber_batch": 512, "decoder_epochs": 1,
                 "joint_epochs": 1, "regen_every": 1, "decoder_blocks": (1, 1, 1, 1),
                 "weight_images": 4},
    "bpfm": {"latent": 16, "map_epochs": 1},
    "mbpfm": {"latent": 16, "map_epochs": 1},
    "nf_bmr": {"flow_hidden": 16, "flow_epochs": 1, "latent": 16, "map_epochs": 1},
    "ndp_net": {"phase1_epochs": 1, "phase2_epochs": 1, "decoder_blocks": (1, 1, 1, 1),
                "seg_hidden": (4, 4, 4), "fusion_channels": 8},
}


def tiny_overrides(method: str) -> dict[str, Any]:
    """TOY and the method's TINY entry; LookupError for a registered method without one."""
    if method not in TINY:
        raise LookupError(f"tests/fixtures_runs.py: TINY has no entry for the registered method "
                          f"{method!r}; add the settings that make its run take seconds")
    return {**TOY, **TINY[method]}


def method_runs(data: Path, category: str, runs: Path, suffix: str = "toy",
                skip: tuple[str, ...] = ()) -> dict[str, Path]:
    """``{method: run}``: one tiny run (:func:`tiny_overrides`) of each registered method not
    in ``skip``, named ``<method>_<suffix>``."""
    return {name: run_experiment(name, data, category, runs / f"{name}_{suffix}",
                                 overrides=tiny_overrides(name), progress=False)
            for name in sorted(load_methods()) if name not in skip}


def toy_runs(base: Path) -> dict[str, Any]:
    """``{"data": data root, "runs": runs root, "a": run, "b": run, "methods": {method: run}}``
    under ``base``; ``a`` and ``b`` are PaDiM runs, ``a`` is also PaDiM's entry in ``methods``."""
    data = make_toy_dataset(base / "data", n_train=30, n_good=6, n_defect=6)
    runs = base / "runs"
    a = run_experiment("padim", data, "toy", runs / "padim_toy_a", overrides=tiny_overrides("padim"),
                       progress=False)
    b = run_experiment("padim", data, "toy", runs / "padim_toy_b",
                       overrides={**TOY, "n_features": 40, "blur_sigma": 2.0}, progress=False)
    methods = {"padim": a, **method_runs(data, "toy", runs, skip=("padim",))}
    return {"data": data, "runs": runs, "a": a, "b": b, "methods": dict(sorted(methods.items()))}


def sample_runs(runs: Path) -> dict[str, Any]:
    """Runs on the embedded MTD sample: PaDiM with ImageNet Lite0 weights at 128 px (~45 s on
    2 busy cores; 256 px takes 4x longer) and a tiny untrained-backbone run of every registered
    method (``<method>_untrained_64``)."""
    real = run_experiment("padim", SAMPLE_ROOT, DEFAULT_CATEGORY, runs / "padim_lite0_128",
                          overrides={"image_size": 128}, progress=False)
    untrained = method_runs(SAMPLE_ROOT, DEFAULT_CATEGORY, runs, suffix="untrained_64")
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
