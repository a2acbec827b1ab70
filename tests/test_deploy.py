"""kit.deploy and `python -m kit onnx`: every registered method exported to ONNX and scored by
ONNX Runtime like PyTorch scores it (DifferNet refused with its reason), and bad model files
refused with a clear error."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fixtures_runs import tiny_overrides
from kit import deploy
from kit.cli import main
from kit.data import ImageSet, find_category
from kit.method import FitContext, load_methods, make_method
from kit.pipeline import run_experiment

NOT_EXPORTABLE = {"differnet": "gradients"}  # method -> what its refusal names


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", sorted(load_methods()))
def test_the_onnx_command_exports_every_method_as_pytorch_scores_it(name, toy_root, tmp_path, capsys):
    """``python -m kit onnx RUN --batch 3`` on a tiny run of each registered method: the graph
    gives every output of ``predict`` (primary, named maps and scores, reconstructions) to
    float rounding, and, fed all test images in padded pieces of 3, the scores the run
    recorded at its own batch size (so each method scores an image independently of its
    batch). DifferNet is refused, with why, and leaves no file."""
    run = run_experiment(name, toy_root, "toy", tmp_path / name, overrides=tiny_overrides(name),
                         progress=False)
    capsys.readouterr()
    if name in NOT_EXPORTABLE:
        assert main(["onnx", str(run), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "does not export to ONNX" in err and NOT_EXPORTABLE[name] in err
        assert not list(run.glob("*onnx*")), "a failed export left a file"
        return
    assert main(["onnx", str(run), "--check", "4", "--batch", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    check = json.loads((run / deploy.CHECK_FILE).read_text())
    assert f"wrote {run / deploy.MODEL_FILE}" in out and check["method"] == name
    assert check["images"] == 4 and check["batch"] == 3 and check["max_rel_diff"] < deploy.MAX_REL_DIFF
    assert check["eager_ms_per_image"] > 0 and check["onnx_ms_per_image"] > 0
    assert f"{check['onnx_ms_per_image']:.1f} ms per image" in out
    assert sorted(p.name for p in run.glob("*onnx*")) == sorted([deploy.CHECK_FILE, deploy.MODEL_FILE])
    recorded = pd.read_csv(run / "scores.csv")
    images = ImageSet(find_category(toy_root, "toy").test, 64).tensor().float() / 255.0
    assert len(images) % 3  # the last piece is padded
    fast = deploy.OnnxPredictor(run / deploy.MODEL_FILE).predict(images)
    np.testing.assert_allclose(fast.image_scores.numpy(), recorded["score"].to_numpy(), rtol=1e-4,
                               atol=1e-4 * float(np.abs(recorded["score"]).max()))


def test_a_graph_that_fails_its_check_is_not_kept(toy_root, tmp_path, capsys, monkeypatch):
    run = run_experiment("padim", toy_root, "toy", tmp_path / "padim",
                         overrides=tiny_overrides("padim"), progress=False)
    assert main(["onnx", str(run), "--check", "2", "--quiet"]) == 0
    monkeypatch.setattr(deploy, "max_rel_diff", lambda a, b: 0.5)  # as if the graph were wrong
    capsys.readouterr()
    assert main(["onnx", str(run), "--check", "2", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "differs from PyTorch by 5.0e-01" in err and len(err.strip().splitlines()) == 1
    # neither the new graph nor the earlier export's files, which described another graph
    assert not list(run.glob("*onnx*")) and not list(run.glob(".*onnx*"))
    monkeypatch.undo()
    assert main(["onnx", str(run), "--check", "1", "--quiet"]) == 0
    # an exported run is still a run folder: a rerun with overwrite replaces it
    assert run_experiment("padim", toy_root, "toy", run, overrides=tiny_overrides("padim"),
                          progress=False, overwrite=True) == run
    assert not list(run.glob("*onnx*"))


def test_every_method_that_exports_is_listed_as_exporting():
    assert set(NOT_EXPORTABLE) <= set(load_methods())


def test_a_graph_of_batch_two_scores_any_number_of_images(toy_root, tmp_path):
    """Three images through a batch-2 graph (the last piece padded with a copy): each image's
    outputs as eager PyTorch gives them, with every named map of CLS-CNFs."""
    cat = find_category(toy_root, "toy")
    method = make_method("cls_cnfs", "quick", **tiny_overrides("cls_cnfs"))
    method.fit(ImageSet(cat.train, 64), FitContext(progress=False))
    images = ImageSet(cat.test, 64).tensor()[[0, 1, -1]].float() / 255.0
    predictor = deploy.OnnxPredictor(deploy.export_onnx(method, tmp_path / "m.onnx", batch=2))
    assert (predictor.method, predictor.image_size, predictor.batch) == ("cls_cnfs", 64, 2)
    eager, fast = method.predict(images), predictor.predict(images)
    assert deploy.output_names(fast) == deploy.output_names(eager)
    assert any(n.startswith("map.") for n in deploy.output_names(fast))
    assert deploy.max_rel_diff(eager, fast) < 1e-4
    assert deploy.max_rel_diff(method.predict(images[2:]), predictor.predict(images[2:])) < 1e-4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the foreign model's legacy export
def test_the_predictor_refuses_wrong_sizes_and_files_not_written_by_the_kit(toy_root, tmp_path):
    cat = find_category(toy_root, "toy")
    method = make_method("padim", "quick", **tiny_overrides("padim"))
    method.fit(ImageSet(cat.train, 64), FitContext(progress=False))
    predictor = deploy.OnnxPredictor(deploy.export_onnx(method, tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        predictor.predict(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no images"):
        predictor.predict(torch.rand(0, 3, 64, 64))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="garbage.onnx: not a model"):
        deploy.OnnxPredictor(garbage)
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 1, 1), (torch.rand(1, 3, 8, 8),), str(foreign),
                      dynamo=False, input_names=["images"])
    with pytest.raises(ValueError, match="not written by kit"):
        deploy.OnnxPredictor(foreign)
    with pytest.raises(FileNotFoundError, match="python -m kit onnx"):
        deploy.OnnxPredictor(tmp_path / "missing.onnx")


def test_the_onnx_command_refuses_bad_input_in_one_line(tmp_path, capsys):
    (tmp_path / "not_a_run").mkdir()
    for folder in ("nowhere", "not_a_run"):
        assert main(["onnx", str(tmp_path / folder), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert folder in err and len(err.strip().splitlines()) == 1
    for option in ("--check", "--batch", "--threads"):
        with pytest.raises(SystemExit):
            main(["onnx", str(tmp_path), option, "0"])
        assert "must be at least 1" in capsys.readouterr().err


def test_export_runs_tables_every_run_and_names_the_one_that_does_not_export(toy_root, tmp_path):
    """Notebook 05's helper: one row per run, an error row where the method does not export."""
    runs = [run_experiment(name, toy_root, "toy", tmp_path / name, overrides=tiny_overrides(name),
                           progress=False) for name in ("padim", "differnet")]
    rows = deploy.export_runs(runs, n_check=2)
    assert [r["method"] for r in rows] == ["padim", "differnet"]
    assert rows[0]["max_rel_diff"] < deploy.MAX_REL_DIFF and "error" not in rows[0]
    assert "gradients" in rows[1]["error"]
    text = deploy.checks_markdown(rows).splitlines()
    assert len(text) == 4 and text[2].startswith("| `padim` | ") and text[2].endswith(
        f"x{rows[0]['eager_ms_per_image'] / rows[0]['onnx_ms_per_image']:.2f} |")
    assert text[3].startswith("| `differnet` | does not export: DifferNet does not export to ONNX")
