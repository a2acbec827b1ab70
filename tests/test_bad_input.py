"""Bad input a new user gave the kit: each case loses no data and gets a clear, early error.

Every case here was seen on landed code (issue 8): a folder emptied by ``--overwrite``,
16-bit images read as white, a category escaping the data root, runs whose JSON is not an
object, tampered checkpoints, settings of the wrong type, checks that came after the fit,
masks silently left out, a diverging flow, stale staging folders and a name ending in a
newline.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kit.data
import kit.method
from conftest import write_png
from kit import runstore
from kit.cli import main
from kit.data import DataError, DataWarning, ImageSet, Sample, find_category, read_image, read_mask
from kit.methods.differnet import DifferNet, DifferNetConfig
from kit.flows import FlowDivergedError, check_finite_loss
from kit.method import ConfigError, load_methods
from kit.pipeline import run_experiment
from kit.runstore import RunError, list_runs, load_run, safe_run_dir, write_run

TINY = ["--weights", "none", "--image-size", "64", "--quiet"]


def _fit(toy_root: Path, *extra: str) -> list[str]:
    return ["fit", "--method", "padim", "--data-root", str(toy_root), "--category", "toy",
            *TINY, *extra]


def _run_parts(n: int = 2) -> dict:
    metrics = {k: 0.5 for k in runstore.REQUIRED_METRICS}
    metrics.update(method="padim", backbone="b", budget="quick")
    rows = [{"index": i, "name": f"good/{i}.png", "path": f"/x/{i}.png", "defect_type": "good",
             "label": i % 2, "score": float(i), "pixel_included": True} for i in range(n)]
    return dict(config={"method": "padim"}, metrics=metrics, scores=rows, maps=np.zeros((n, 4, 4)),
                map_stats={"p50": 0.0}, curves={}, features={}, checkpoint={"w": torch.ones(2)})


@pytest.fixture
def no_fit(monkeypatch):
    """Make every method's fit fail loudly: a check that must come first then shows it did."""
    def fit(self, *args, **kwargs):
        raise AssertionError("fit() ran before the check")
    for cls in load_methods().values():
        monkeypatch.setattr(cls, "fit", fit)


# ---------------------------------------------------------------------------------------------
# data loss, corruption and escapes
# ---------------------------------------------------------------------------------------------

def test_overwrite_never_deletes_a_folder_that_is_not_a_run(toy_root, tmp_path, capsys, no_fit):
    mine = tmp_path / "my_folder"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("two years of work")
    assert main(_fit(toy_root, "--out", str(mine), "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "not a run folder" in err and "thesis.tex" in err
    assert (mine / "thesis.tex").read_text() == "two years of work" and (mine / "sub").is_dir()


def test_overwrite_refuses_the_current_folder(toy_root, tmp_path, monkeypatch, capsys, no_fit):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)  # empty, so only the "current folder" rule can refuse it
    assert main(_fit(toy_root, "--out", ".", "--overwrite")) == 2
    assert "current folder" in capsys.readouterr().err and here.is_dir()


def test_overwrite_replaces_a_run_or_an_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    write_run(empty, overwrite=True, **_run_parts())
    assert load_run(empty).metrics["method"] == "padim"
    write_run(empty, overwrite=True, **_run_parts(3))  # a run replaces a run
    assert len(load_run(empty).scores) == 3
    (empty / "notes.txt").write_text("mine")  # ... but not once the user put a file in it
    with pytest.raises(RunError, match="notes.txt"):
        write_run(empty, overwrite=True, **_run_parts())
    assert (empty / "notes.txt").is_file()


def test_sixteen_bit_images_are_scaled_not_white(tmp_path):
    ramp = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64491
    for suffix in (".png", ".tif"):
        path = tmp_path / f"ramp16{suffix}"
        Image.fromarray(ramp).save(path)
        assert Image.open(path).mode.startswith("I;16")
        rgb = read_image(path, 64)
        expected = np.asarray(Image.fromarray(np.round(ramp / 257).astype(np.uint8))
                              .resize((64, 64), Image.BILINEAR))
        assert rgb.shape == (64, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()
        assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
        assert (rgb == 255).mean() < 0.01  # PIL's own convert("RGB") made 99 % of it white


def test_sixteen_bit_training_images_reach_the_model_scaled(tmp_path):
    root = tmp_path / "data"
    value = np.full((40, 40), 30000, np.uint16)  # mid-grey in 16 bits
    for i in range(3):
        path = root / "c/train/good" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(value).save(path)
    write_png(root / "c/test/good/0.png", np.full((40, 40), 117, np.uint8))
    cat = find_category(root, "c")
    pixels = ImageSet(cat.train, 32).tensor()
    assert int(pixels.min()) == int(pixels.max()) == round(30000 / 257)


@pytest.mark.parametrize("category", ["../../x", "..", "a/b", "/etc", " toy"])
def test_a_category_cannot_leave_the_data_root(toy_root, tmp_path, category, capsys, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("KIT_RUNS_ROOT", str(runs))
    with pytest.raises(DataError, match="invalid category name"):
        find_category(toy_root, category)
    assert main(["fit", "--method", "padim", "--data-root", str(toy_root), "--category", category,
                 *TINY]) == 2
    assert "invalid category name" in capsys.readouterr().err
    assert not runs.exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("broken_file", ["metrics.json", "config.json"])
@pytest.mark.parametrize("content", ["null", "[1, 2]", '"text"', "3"])
def test_json_that_is_not_an_object_is_a_broken_run(tmp_path, capsys, broken_file, content):
    root = tmp_path / "runs"
    write_run(root / "good_run", **_run_parts())
    write_run(root / "bad_run", **_run_parts())
    (root / "bad_run" / broken_file).write_text(content)
    runs, broken = list_runs(root)
    assert [r.name for r in runs] == ["good_run"]
    assert len(broken) == 1 and "bad_run" in broken[0] and broken_file in broken[0]
    assert main(["list", str(root)]) == 0
    out = capsys.readouterr().out
    assert "good_run" in out and "broken:" in out and broken_file in out


# ---------------------------------------------------------------------------------------------
# clear errors instead of tracebacks, and early instead of late
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    from conftest import make_toy_dataset

    data = make_toy_dataset(tmp_path_factory.mktemp("data"))
    return run_experiment("padim", data, "toy", tmp_path_factory.mktemp("runs") / "r",
                          overrides={"weights": "none", "image_size": 64}, progress=False)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "pickle payload", "a list"])
def test_a_damaged_checkpoint_is_a_run_error_naming_the_file(toy_run, tmp_path, capsys, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    ckpt = run / "checkpoint.pt"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif damage == "garbage":
        ckpt.write_bytes(os.urandom(4096))
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "pickle payload":
        ckpt.write_bytes(pickle.dumps(_Payload()))
    else:
        torch.save([1, 2, 3], ckpt)
    with pytest.raises(RunError, match="checkpoint.pt"):
        load_run(run).checkpoint()
    assert main(["eval", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "Traceback" not in err


@pytest.mark.parametrize("method,setting,expected", [
    ("padim", "n_features=abc", "n_features must be a whole number"),
    ("differnet", "epochs=abc", "epochs must be a whole number"),
    ("padim", "image_size=0", "image_size=0 is out of range"),
    ("padim", "image_size=100000", "image_size=100000 is out of range"),
    ("differnet", "lr=-1", "lr=-1.0 is out of range"),
    ("differnet", "standardize=yes", "standardize must be true or false"),
    ("differnet", "scales=[128,\"x\"]", "scales[1] must be a whole number"),
    ("padim", "epochs=3", "unknown setting(s) for PadimConfig: epochs"),
])
def test_settings_are_checked_before_any_work(toy_root, tmp_path, capsys, monkeypatch, method,
                                              setting, expected):
    def no_images(*args, **kwargs):
        raise AssertionError("an image was read before the settings were checked")
    monkeypatch.setattr(kit.data, "read_image", no_images)
    monkeypatch.setattr(kit.data.Image, "open", no_images)
    code = main(["fit", "--method", method, "--data-root", str(toy_root), "--category", "toy",
                 "--out", str(tmp_path / "r"), "--weights", "none", "--quiet", "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_every_method_checks_its_settings():
    for name, cls in load_methods().items():
        with pytest.raises(ConfigError, match="image_size"):
            cls.config_cls.for_budget("quick", image_size="big")
        assert cls.config_cls.for_budget("quick", seed=3).seed == 3, name


def test_an_existing_out_is_refused_before_the_fit(toy_root, tmp_path, capsys, no_fit):
    out = tmp_path / "r"
    out.mkdir()
    assert main(_fit(toy_root, "--out", str(out))) == 2
    assert "exists already" in capsys.readouterr().err


def test_a_mask_of_the_wrong_size_is_refused_before_the_fit(toy_root, tmp_path, capsys, no_fit):
    mask = toy_root / "toy/ground_truth/crack/001_mask.png"
    write_png(mask, np.zeros((7, 9), np.uint8))
    assert main(_fit(toy_root, "--out", str(tmp_path / "r"))) == 2
    err = capsys.readouterr().err
    assert "001_mask.png: mask is 9x7" in err and not (tmp_path / "r").exists()


def test_missing_and_faint_masks_are_named_in_a_warning(toy_root, tmp_path):
    (toy_root / "toy/ground_truth/crack/000_mask.png").unlink()
    write_png(toy_root / "toy/ground_truth/crack/002_mask.png", np.full((40, 48), 90, np.uint8))
    with pytest.warns(DataWarning) as caught:
        path = run_experiment("padim", toy_root, "toy", tmp_path / "r", progress=False,
                              overrides={"weights": "none", "image_size": 64})
    message = "\n".join(str(w.message) for w in caught)
    assert "2 defect image(s)" in message
    assert "crack/000.png: no mask file" in message and "002_mask.png: no pixel above 127" in message
    assert load_run(path).config["data_warnings"] and \
        sum(not r["pixel_included"] for r in load_run(path).scores) == 2


def test_cli_prints_the_warning_as_one_plain_line(toy_root, tmp_path):
    (toy_root / "toy/ground_truth/crack/000_mask.png").unlink()
    proc = subprocess.run([sys.executable, "-m", "kit", *_fit(toy_root, "--out", str(tmp_path / "r"))],
                          capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 0, err
    assert "warning: 1 defect image(s)" in err and "000.png: no mask file" in err
    assert "warnings.warn" not in err  # not Python's source-line format


def test_a_coloured_mask_is_read_as_drawn(tmp_path):
    image = write_png(tmp_path / "img.png", np.full((20, 30), 100, np.uint8))
    red = np.zeros((20, 30, 3), np.uint8)
    red[5:10, 5:15] = (255, 0, 0)  # gray value 76: below the > 127 cut once converted to L
    sample = Sample(image, 1, "crack", write_png(tmp_path / "m.png", red))
    full = kit.data.read_full_mask(sample)
    assert full.sum() == 50 and full[5:10, 5:15].all()
    resized = Image.fromarray(full.astype(np.uint8) * 255).resize((30, 30), Image.NEAREST)
    assert (read_mask(sample, 30) == (np.asarray(resized) > 0)).all() and read_mask(sample, 30).any()


def test_a_diverging_flow_stops_at_once_and_names_the_learning_rate():
    with pytest.raises(FlowDivergedError, match=r"lr=0.0002; try --set lr=2e-05"):
        check_finite_loss(torch.tensor(float("nan")), 0, 2e-4)
    check_finite_loss(torch.tensor(1.5), 0, 2e-4)  # a finite loss passes
    config = DifferNetConfig.for_budget("quick", weights="none", image_size=64, scales=(64,),
                                        hidden=8, epochs=50, n_blocks=2)
    method = DifferNet(config)
    method.flow = method.build_flow()
    data = torch.randn(32, method.dim)
    data[3, 0] = float("inf")  # one bad feature row: its batch's loss is not finite
    epochs_done = []
    with pytest.raises(FlowDivergedError, match="epoch 1"):
        method.train_flow(data, torch.Generator().manual_seed(0), progress=False,
                          on_epoch=lambda epoch, m, loss: epochs_done.append(epoch))
    assert epochs_done == []  # stopped inside the first epoch, not after fifty


def test_staging_folders_of_a_killed_write_are_cleaned_on_the_next(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".tmp-old_run-{dead.pid}-0123abcd"
    (stale / "sub").mkdir(parents=True)
    (stale / "maps.npz").write_bytes(b"half a file")
    trash = tmp_path / f".trash-other-{dead.pid}-89abcdef"
    trash.mkdir()
    live = tmp_path / f".tmp-busy-{os.getppid()}-00000000"  # another process still writing
    live.mkdir()
    legacy = tmp_path / ".tmp-young-0123abcd"  # pre-pid name, younger than a day: kept
    legacy.mkdir()
    foreign = tmp_path / ".tmp-notes"  # not a name the kit makes
    foreign.mkdir()
    write_run(tmp_path / "new_run", **_run_parts())
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["new_run", live.name, legacy.name, foreign.name])


def test_a_run_name_cannot_end_in_a_newline(tmp_path):
    for name in ("run\n", "run\r", "run\nx", "run "):
        with pytest.raises(RunError, match="invalid run name"):
            safe_run_dir(tmp_path, name)
    assert safe_run_dir(tmp_path, "run_1.a-b") == (tmp_path / "run_1.a-b").resolve()


def test_json_settings_in_config_files_are_checked_too(toy_run, tmp_path):
    import shutil

    from kit.pipeline import restore_method

    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["config"]["n_features"] = "many"
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(ConfigError, match="n_features must be a whole number"):
        restore_method(run)
    assert json.loads((run / "config.json").read_text())["method"] == "padim"


def test_a_sixteen_bit_upload_is_scaled_not_white():
    import io

    from kit.app.try_it import read_upload

    buf = io.BytesIO()
    Image.fromarray(np.full((30, 40), 51400, np.uint16)).save(buf, format="PNG")
    rgb = read_upload(buf.getvalue())
    assert rgb.shape == (30, 40, 3) and int(rgb.min()) == int(rgb.max()) == 200  # 51400 / 257


def test_an_existing_run_is_compared_not_just_refused(toy_run, capsys, no_fit):
    data = load_run(toy_run).config["data_root"]
    same = ["fit", "--method", "padim", "--data-root", data, "--category", "toy", "--out",
            str(toy_run), *TINY]
    assert main(same) == 2
    assert "made with these same settings and data" in capsys.readouterr().err
    assert main([*same, "--set", "n_features=20"]) == 2
    err = capsys.readouterr().err
    assert "made with other settings (n_features: 100 -> 20)" in err and "--overwrite" in err
    assert main([*same[:2], "differnet", *same[3:]]) == 2
    assert "method: 'padim' -> 'differnet'" in capsys.readouterr().err
