"""The peer comparison (``benchmarks/peer_anomalib.py``): anomalib's PaDiM and CFlow get the
kit's offline weights and layers for real, the script runs end to end on the embedded sample,
and the report renders its rows."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from kit import report
from kit.backbones import FeatureExtractor
from kit.data import ImageSet, find_category
from kit.method import method_class
from kit.paths import DEFAULT_CATEGORY, REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

pytest.importorskip("anomalib", reason="anomalib is in requirements.txt: make setup installs it")
import peer_anomalib as peer  # noqa: E402


def first_test_image(sample_root, size: int = 128) -> torch.Tensor:
    cat = find_category(sample_root, DEFAULT_CATEGORY)
    return ImageSet(cat.test[:1], size).tensor().float() / 255.0


@pytest.mark.parametrize("name", sorted(peer.PEERS))
def test_anomalib_extractor_gets_our_weights_and_layers(name, sample_root):
    image = first_test_image(sample_root)
    stages = method_class(name).config_cls().layers  # the method's default stages
    ours = FeatureExtractor("tf_efficientnet_lite0", stages, "offline").eval()

    untouched = peer.PEERS[name].build("tf_efficientnet_lite0")  # random weights
    with pytest.raises(RuntimeError, match="not the same weights"):
        peer.check_same_features(untouched, ours, image)

    module = peer.PEERS[name].build("tf_efficientnet_lite0")
    left_out = peer.load_kit_weights(module, "tf_efficientnet_lite0")
    assert left_out and all(k.split(".")[0] in {"conv_head", "bn2", "classifier"} for k in left_out)
    assert peer.check_same_features(module, ours, image) <= peer.FEATURE_TOLERANCE


def test_pretrained_downloads_are_refused_inside_the_comparison_only():
    import timm
    import timm.models._builder as builder

    original = builder.load_pretrained
    with peer.hub_downloads_blocked():
        with pytest.raises(RuntimeError, match="download was attempted"):
            timm.create_model("tf_efficientnet_lite0", pretrained=True)
    assert builder.load_pretrained is original


@pytest.mark.slow
def test_comparison_runs_on_the_sample_and_merges_rows(sample_root, tmp_path):
    out = tmp_path / "peer.json"
    tiny = {"padim": {"image_size": 128}, "cflow": {"image_size": 128}}
    common = ["--data-root", str(sample_root), "--runs-root", str(tmp_path / "runs"),
              "--out", str(out), "--repeats", "2", "--no-progress"]
    assert peer.main(common, extra_overrides=tiny) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"padim", "cflow"}
    n_test = len(find_category(sample_root, DEFAULT_CATEGORY).test)
    for name, row in rows.items():
        run_config = json.loads((tmp_path / "runs" / row["ours"]["run"] / "config.json").read_text())
        assert row["n_fit"] == len(run_config["fit_images"]) and row["n_test"] == n_test
        assert row["image_size"] == 128 and row["data"] == "sample"
        assert row["feature_difference"] <= peer.FEATURE_TOLERANCE
        for side in (row["ours"], row["anomalib_side"]):
            for metric in report.METRICS:
                assert 0.0 <= side[metric] <= 1.0, (name, metric)
            assert side["fit_seconds"] > 0 and side["ms"] > 0
        assert row["speedup"] == pytest.approx(row["anomalib_side"]["ms"] / row["ours"]["ms"], rel=0.01)
        assert row["workarounds"] == list(peer.WORKAROUNDS)
    # ours is the run itself: the same metrics the run stored
    run_metrics = json.loads((tmp_path / "runs" / rows["padim"]["ours"]["run"] / "metrics.json").read_text())
    assert rows["padim"]["ours"]["pixel_auroc"] == round(run_metrics["pixel_auroc"], 4)

    before = rows["cflow"]
    assert peer.main(common + ["--methods", "padim"], extra_overrides=tiny) == 0
    again = {r["method"]: r for r in json.loads(out.read_text())}
    assert again["cflow"] == before, "a row of a method not measured again must stay as it was"
    # the same seed, the same data: anomalib's PaDiM scores the same again
    assert again["padim"]["anomalib_side"]["aupro"] == rows["padim"]["anomalib_side"]["aupro"]

    text = report.peer_markdown(list(again.values()))
    assert "`padim` vs `anomalib.models.Padim`" in text and "`cflow` vs `anomalib.models.Cflow`" in text


def _row(ours: dict, theirs: dict, speedup: float) -> dict:
    base = {"fit_seconds": 10.0, "ms": 50.0}
    return {"method": "cflow", "peer": "anomalib.models.Cflow", "anomalib": "2.7.0", "data": "mtd",
            "category": "magnetic_tile", "budget": "quick", "backbone": "tf_efficientnet_lite0",
            "image_size": 256, "n_fit": 240, "n_test": 583, "bare_ms": 30.0,
            "ours": {**base, **ours}, "anomalib_side": {**base, **theirs}, "speedup": speedup,
            "load_before": 1.0, "load_after": 1.1, "created": "2026-12-06T02:00:00",
            "workarounds": ["input: normalised"]}


def test_peer_markdown_marks_the_better_side_and_the_target():
    metrics = dict.fromkeys(report.METRICS, 0.8)
    better = _row({**metrics, "aupro": 0.9}, {**metrics, "aupro": 0.7}, 2.5)
    text = report.peer_markdown([better])
    assert "**0.900** / 0.700" in text and "0.800 / 0.800" in text
    assert "| yes, yes |" in text and "- input: normalised" in text
    worse = _row({**metrics, "image_auroc": 0.7}, metrics, 1.5)
    assert "| no, no |" in report.peer_markdown([worse])
    assert "0.700 / **0.800**" in report.peer_markdown([worse])
    missing = _row({**metrics, "aupro": None}, metrics, 2.0)
    assert "- / 0.800" in report.peer_markdown([missing]) and "| yes, yes |" in report.peer_markdown([missing])
