"""The whole path: CLI -> fit -> threshold on held-out normals -> metrics -> run folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fixtures_runs import tiny_overrides
from kit.cli import main
from kit.method import load_methods
from kit.runfacts import MEASURED
from kit.pipeline import rescore_run, restore_method, run_experiment, run_is_current
from kit.runstore import RUN_FILES, load_run

FAST = {"weights": "none", "image_size": 64}  # untrained backbone: plumbing tests only


def _fit(toy_root, out, seed=0, **extra):
    return run_experiment("padim", toy_root, "toy", out, seed=seed, progress=False,
                          overrides={**FAST, **extra})


def test_run_folder_is_complete(toy_root, tmp_path):
    stages = []
    path = run_experiment("padim", toy_root, "toy", tmp_path / "run", progress=False,
                          overrides=FAST, on_stage=lambda s, f: stages.append((s, f)))
    assert all((path / f).is_file() for f in RUN_FILES)
    run = load_run(path)
    m = run.metrics
    for key in ("image_auroc", "pixel_auroc", "pixel_aupr", "aupro", "pixel_auroc_per_image",
                "fit_seconds", "infer_ms_per_image", "method", "backbone", "image_size", "budget", "seed", "n_train", "n_test"):
        assert key in m
    assert m["n_train"] + m["n_val"] == 12 and m["n_test"] == 8
    assert m["threshold_source"] == "held-out normal training images"
    assert run.maps.shape == (8, 64, 64)
    assert run.features["source"]["x"].shape[0] == m["n_train"] + 8
    assert set(run.config["val_images"]).isdisjoint(run.config["fit_images"])
    assert [f for _, f in stages] == sorted(f for _, f in stages) and stages[-1] == ("done", 1.0)
    # the toy defects are bright squares: even an untrained backbone sees them
    assert m["image_auroc"] > 0.9


def test_same_seed_same_metrics(toy_root, tmp_path):
    a = load_run(_fit(toy_root, tmp_path / "a", seed=1)).metrics
    b = load_run(_fit(toy_root, tmp_path / "b", seed=1)).metrics
    drop = set(MEASURED)
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


def test_a_run_made_with_another_config_is_not_current(toy_root, tmp_path, monkeypatch):
    """Ablation sweeps and notebooks reuse runs; a stale one (config changed since) is redone."""
    path = _fit(toy_root, tmp_path / "run")
    assert run_is_current(path, "padim", "quick", 0, FAST)
    assert not run_is_current(path, "padim", "quick", 1, FAST)  # another seed
    assert not run_is_current(path, "padim", "quick", 0, {**FAST, "image_size": 32})
    assert not run_is_current(tmp_path / "missing", "padim", "quick", 0, FAST)
    from kit.methods.padim import PadimConfig  # a budget edited in the code after the run was made
    monkeypatch.setitem(PadimConfig.BUDGETS, "quick", {**PadimConfig.BUDGETS.get("quick", {}),
                                                       "threshold_quantile": 0.5})
    assert not run_is_current(path, "padim", "quick", 0, FAST)


def test_checkpoint_restores_the_same_scores(toy_root, tmp_path):
    path = _fit(toy_root, tmp_path / "r")
    run = load_run(path)
    fresh = rescore_run(path, progress=False)
    assert fresh["image_auroc"] == pytest.approx(run.metrics["image_auroc"], abs=1e-9)
    assert fresh["aupro"] == pytest.approx(run.metrics["aupro"], abs=1e-6)
    method = restore_method(path)
    assert method.config.image_size == 64


def test_without_validation_the_threshold_says_in_sample(toy_root, tmp_path):
    m = load_run(_fit(toy_root, tmp_path / "r", val_fraction=0.0)).metrics
    assert m["threshold_source"] == "fit images (in-sample)" and m["n_val"] == 0


def test_cli_fit_list_eval(toy_root, tmp_path, capsys):
    out = tmp_path / "runs" / "cli_run"
    code = main(["fit", "--method", "padim", "--data-root", str(toy_root), "--category", "toy",
                 "--out", str(out), "--weights", "none", "--image-size", "64", "--quiet",
                 "--set", "n_features=20"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "image_auroc=" in printed
    per_type = next(line for line in printed.splitlines() if "pixel_auroc per defect type: " in line)
    assert sorted(load_run(out).metrics["by_defect"]) == [
        part.split("=")[0] for part in per_type.split(": ", 1)[1].split()]
    assert load_run(out).config["method_config"]["n_features"] == 20
    assert main(["list", str(tmp_path / "runs")]) == 0
    assert "cli_run" in capsys.readouterr().out
    assert main(["eval", str(out), "--quiet"]) == 0
    assert "largest difference: 0.00e+00" in capsys.readouterr().out


@pytest.mark.parametrize("method", sorted(load_methods()))
def test_cli_fit_list_eval_with_every_method(method, toy_root, tmp_path, capsys):
    """Every registered method through the command line: fit, list, then eval re-scores the
    checkpoint to the stored metrics."""
    out = tmp_path / "runs" / f"cli_{method}"
    settings = [f"--set={k}={json.dumps(list(v) if isinstance(v, tuple) else v)}"
                for k, v in tiny_overrides(method).items()]
    assert main(["fit", "--method", method, "--data-root", str(toy_root), "--category", "toy",
                 "--out", str(out), "--quiet", *settings]) == 0
    assert load_run(out).method == method
    assert main(["list", str(tmp_path / "runs")]) == 0
    assert f"cli_{method}" in capsys.readouterr().out
    assert main(["eval", str(out), "--quiet"]) == 0
    worst = float(capsys.readouterr().out.strip().splitlines()[-1].split()[-1])
    assert worst < 1e-4, f"{method}: re-scored metrics differ by {worst}"


def test_cli_bad_inputs_give_one_clear_line(toy_root, tmp_path, capsys):
    bad = toy_root / "toy/train/good/003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code = main(["fit", "--method", "padim", "--data-root", str(toy_root), "--category", "toy",
                 "--out", str(tmp_path / "r"), "--weights", "none", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "003.png: unreadable or truncated image" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing half-written
    assert main(["fit", "--method", "padim", "--data-root", str(toy_root), "--category", "nope"]) == 2
    assert "unknown category 'nope'" in capsys.readouterr().err
    assert main(["fit", "--method", "nosuch", "--data-root", str(toy_root), "--category", "toy"]) == 2
    assert "unknown method 'nosuch'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing")]) == 2


def test_python_dash_m_kit_entry_point(toy_root, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kit", "info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "padim" in proc.stdout and "tf_efficientnet_lite0" in proc.stdout


@pytest.mark.slow
def test_padim_on_the_embedded_real_sample(sample_root, tmp_path):
    """Real weights, real MTD images: PaDiM must clearly separate defects (measured 0.86)."""
    path = run_experiment("padim", sample_root, "magnetic_tile", tmp_path / "p", progress=False)
    m = load_run(path).metrics
    assert m["image_auroc"] > 0.8
    assert 0.6 < m["pixel_auroc"] <= 1 and 0 < m["aupro"] <= 1
    assert m["n_test"] == 65 and m["n_train"] == 90
    assert np.isfinite(m["precision"]) and m["threshold"] > 0


def test_a_fit_the_reference_results_say_will_not_fit_in_memory_is_warned_before_it_starts(
        toy_root, tmp_path, monkeypatch):
    from kit import runfacts

    records = [{"method": "padim", "budget": "quick", "data": "mtd", "run": "padim-ref",
                "fit_peak_rss_mb": 4096.0, "n_train": 10, "created": "2026-12-07T10:00:00"},
               {"method": "padim", "budget": "quick", "data": "mtd", "run": "padim-older",
                "fit_peak_rss_mb": 9000.0, "n_train": 10, "created": "2026-12-06T10:00:00"},
               {"method": "padim", "budget": "quick", "data": "mtd", "run": "padim-ablation",
                "fit_peak_rss_mb": 9000.0, "n_train": 10, "created": "2026-12-08T10:00:00",
                "ablation": "table1", "overrides": {"n_features": 400}},
               {"method": "padim", "budget": "quick", "data": "sample", "run": "padim-sample",
                "fit_peak_rss_mb": 99999.0, "n_train": 10},  # the embedded sample: not a reference
               {"method": "cflow", "budget": "quick", "data": "mtd", "run": "cflow-ref",
                "fit_peak_rss_mb": 99999.0, "n_train": 10}]
    # the newest default-settings record speaks for today's code, not older or other settings
    text = runfacts.memory_warning("padim", "quick", 5, available_mb=3000, records=records)
    assert "padim-ref" in text and "fitting 10 training images at 4.0 GB" in text
    assert "2.9 GB are available" in text
    assert runfacts.memory_warning("padim", "quick", 5, available_mb=5000, records=records) is None
    # more training images than the reference's: its part above the process's base scaled up
    text = runfacts.memory_warning("padim", "quick", 20, available_mb=5000, records=records)
    assert "this run has 20 training images (about 7.0 GB, fitting)" in text
    # scoring can need more than the fit: its peak, scaled by test images, counts too
    scored = [{**records[0], "score_peak_rss_mb": 6144.0, "n_test": 8}]
    assert runfacts.memory_warning("padim", "quick", 5, available_mb=5000, records=scored) is None
    text = runfacts.memory_warning("padim", "quick", 5, available_mb=5000, records=scored, n_test=8)
    assert "scoring 8 test images (with metrics) at 6.0 GB" in text
    assert "(about 6.0 GB, scoring and metrics)" in text
    assert runfacts.memory_warning("padim", "quick", 5, available_mb=7000, records=scored,
                                   n_test=8) is None
    assert runfacts.memory_warning("padim", "full", 5, available_mb=1, records=records) is None
    assert runfacts.memory_warning("padim", "quick", 5, available_mb=1, records=[]) is None

    # the pipeline asks before the fit, with the committed records and this machine's memory
    asked, asked_test = [], []
    monkeypatch.setattr("kit.pipeline.memory_warning",
                        lambda *a, n_test: asked.append(a) or asked_test.append(n_test)
                        or "too big for this machine")
    with pytest.warns(runfacts.MemoryWarning, match="too big for this machine"):
        path = _fit(toy_root, tmp_path / "run")
    m = load_run(path).metrics
    assert asked == [("padim", "quick", m["n_train"])] and asked_test == [m["n_test"]] == [8]
