"""Run folders: complete or absent, validated on load, names that cannot escape."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from kit import runstore
from kit.runstore import DISPLAY_SIZE, RunError, list_runs, load_run, safe_run_dir, write_run


def _run_parts(n: int = 4) -> dict:
    metrics = {k: 0.5 for k in runstore.REQUIRED_METRICS}
    metrics.update(method="padim", backbone="b", budget="quick", image_auroc=0.75)
    rows = [{"index": i, "name": f"good/{i}.png", "path": f"/x/{i}.png", "defect_type": "good",
             "label": i % 2, "score": float(i), "pixel_included": True} for i in range(n)]
    return dict(config={"method": "padim", "seed": 0}, metrics=metrics, scores=rows,
                maps=np.random.default_rng(0).random((n, 8, 8)), map_stats={"p50": 0.1, "p999": 0.9},
                curves={"roc": {"fpr": [0, 1], "tpr": [0, 1]}},
                features={"source": {"x": np.ones((n, 3)), "label": np.arange(n) % 2}},
                checkpoint={"mean": torch.arange(3.0), "grid": [2, 2]})


def test_round_trip(tmp_path):
    path = write_run(tmp_path / "r1", **_run_parts())
    run = load_run(path)
    assert run.metrics["image_auroc"] == 0.75 and run.method == "padim"
    assert [r["score"] for r in run.scores] == [0.0, 1.0, 2.0, 3.0]
    assert run.scores[1]["label"] == 1 and run.scores[0]["pixel_included"] is True
    assert run.maps.shape == (4, 8, 8) and run.maps.dtype == np.float32
    # stored in 8 bits: within 0.4 % of the value range of the maps written
    written = _run_parts()["maps"]
    assert np.abs(run.maps - written).max() <= 0.004 * np.ptp(written) + 1e-6
    assert run.map_stats == {"p50": pytest.approx(0.1), "p999": pytest.approx(0.9)}
    assert run.features["source"]["x"].shape == (4, 3)
    assert torch.equal(run.checkpoint()["mean"], torch.arange(3.0))


def test_existing_run_is_not_overwritten_silently(tmp_path):
    write_run(tmp_path / "r", **_run_parts())
    with pytest.raises(RunError, match="exists already"):
        write_run(tmp_path / "r", **_run_parts())
    parts = _run_parts()
    parts["metrics"]["image_auroc"] = 0.9
    write_run(tmp_path / "r", overwrite=True, **parts)
    assert load_run(tmp_path / "r").metrics["image_auroc"] == 0.9
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no temporary or trash folders left


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runstore.torch, "save", boom)  # dies while writing the last file
    with pytest.raises(KeyboardInterrupt):
        write_run(tmp_path / "r", **_run_parts())
    assert list(tmp_path.iterdir()) == []
    runs, broken = list_runs(tmp_path)
    assert runs == [] and broken == []


def test_broken_runs_are_reported_not_loaded(tmp_path):
    good = write_run(tmp_path / "good", **_run_parts())
    bad = write_run(tmp_path / "bad", **_run_parts())
    os.remove(bad / "maps.npz")
    worse = write_run(tmp_path / "worse", **_run_parts())
    (worse / "metrics.json").write_text("{not json")
    (tmp_path / ".tmp-inflight").mkdir()  # a write in progress is not a run
    runs, broken = list_runs(tmp_path)
    assert [r.name for r in runs] == ["good"]
    assert any("missing maps.npz" in b for b in broken) and any("unreadable JSON" in b for b in broken)
    with pytest.raises(RunError, match="missing maps.npz"):
        load_run(bad)
    assert load_run(good).name == "good"


def test_metrics_must_be_complete(tmp_path):
    parts = _run_parts()
    del parts["metrics"]["aupro"]
    with pytest.raises(RunError, match="aupro"):
        write_run(tmp_path / "r", **parts)


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", "..", ".hidden", "", "a" * 200, "x\ny"])
def test_run_names_cannot_escape(tmp_path, name):
    with pytest.raises(RunError):
        safe_run_dir(tmp_path, name)


def test_safe_names_resolve_inside(tmp_path):
    assert safe_run_dir(tmp_path, "padim_mtd-quick.s0") == (tmp_path / "padim_mtd-quick.s0").resolve()


def test_checkpoint_loads_with_weights_only(tmp_path):
    path = write_run(tmp_path / "r", **_run_parts())
    state = torch.load(path / "checkpoint.pt", weights_only=True)
    assert state["grid"] == [2, 2]
    json.loads((path / "config.json").read_text())


def test_large_map_values_do_not_overflow(tmp_path):
    parts = _run_parts()
    parts["maps"] = parts["maps"] * 1e6  # gradient maps or raw NLLs can exceed float16's 65504
    run = load_run(write_run(tmp_path / "r", **parts))
    assert np.isfinite(run.maps).all() and run.maps.max() > 1e5


def test_maps_are_stored_at_display_size_and_old_runs_still_load(tmp_path):
    parts = _run_parts()
    n = len(parts["scores"])
    big = np.random.default_rng(1).random((n, 300, 300)).astype(np.float32)
    run = load_run(write_run(tmp_path / "r", **{**parts, "maps": big}))
    assert run.maps.shape == (n, DISPLAY_SIZE, DISPLAY_SIZE)
    assert abs(float(run.maps.mean()) - float(big.mean())) < 0.01  # area-averaged, not cropped
    # a run written before maps.npz format 2: full-size float16 maps, no quantisation keys
    old = np.random.default_rng(2).random((n, 8, 8)).astype(np.float16)
    np.savez_compressed(run.path / "maps.npz", maps=old, stat_p50=0.1, stat_p999=0.9)
    again = load_run(run.path)
    assert np.array_equal(again.maps, old.astype(np.float32)) and again.map_names == []
    assert again.reconstructions == {} and again.map_stats["p999"] == 0.9


def test_stored_maps_take_at_most_one_byte_per_display_pixel(tmp_path):
    """The guard behind 'a run fits on a laptop disk': whatever S, a stored map costs at most
    DISPLAY_SIZE^2 bytes (8 bits, before compression) per test image and map."""
    parts = _run_parts()
    n = len(parts["scores"])
    noisy = np.random.default_rng(3).random((n, 512, 512)).astype(np.float32)  # incompressible
    run = write_run(tmp_path / "r", **{**parts, "maps": noisy, "named_maps": {"A_p": noisy * 2}})
    budget = 2 * n * DISPLAY_SIZE ** 2 + 20_000  # two maps, plus the npz container
    assert (run / "maps.npz").stat().st_size <= budget
