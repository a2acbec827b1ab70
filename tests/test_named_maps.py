"""Predictions with several named maps and reconstructions, end to end: a method defined here
returns a primary map, two named maps (``A_p``, ``A_nf``, as CLS-CNFs will) and a
reconstruction; the run must store them all, ``metrics.json`` must score each map, and the
compare page must let the user pick a map and show the reconstruction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from streamlit.testing.v1 import AppTest

from kit.data import ImageSet, find_category
from kit.maps import gaussian_blur
from kit.method import (METHODS, AnomalyMethod, FitContext, MethodConfig, Prediction,
                        register)
from kit.paths import REPO_ROOT
from kit.pipeline import RECONSTRUCTION_SAMPLE, restore_method, run_experiment
from kit.runstore import DISPLAY_SIZE, load_run

SIZE = 160  # above the display size, so the run stores smaller maps than it scored


@dataclass
class TwoMapsConfig(MethodConfig):
    image_size: int = SIZE  # maps at S = 160 px
    blur_sigma: float = 2.0  # blur of the second named map


class TwoMaps(AnomalyMethod):
    """Reconstructs every image as the mean training image; ``A_p`` = absolute difference,
    ``A_nf`` = its blur, primary = their mean. ``A_nf`` has its own image score."""

    name = "two_maps_test"
    config_cls = TwoMapsConfig
    feature_spaces = ("source",)

    def fit(self, train: ImageSet, context: FitContext | None = None) -> dict[str, Any]:
        context = self.fit_context(context)
        self.mean_image = torch.stack([train[i] for i in range(len(train))]).mean(0)
        context.epoch_done(1, 1, loss=0.0)
        return {"n": len(train)}

    def predict(self, images: torch.Tensor) -> Prediction:
        recon = self.mean_image.expand_as(images)
        a_p = (images - recon).abs().mean(1)
        a_nf = gaussian_blur(a_p, self.config.blur_sigma)
        primary = (a_p + a_nf) / 2
        return Prediction(primary.flatten(1).amax(1), primary,
                          named_maps={"A_p": a_p, "A_nf": a_nf},
                          named_scores={"A_nf": a_nf.flatten(1).mean(1)},
                          reconstructions=recon.clone())

    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"source": images.mean(dim=(2, 3))}

    def state_dict(self) -> dict[str, Any]:
        return {"mean_image": self.mean_image}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean_image = state["mean_image"]


@pytest.fixture
def two_maps():
    register(TwoMaps)
    yield TwoMaps
    METHODS.pop(TwoMaps.name, None)  # other tests see only the kit's methods


@pytest.fixture
def run(two_maps, toy_root, tmp_path):
    epochs = []
    path = run_experiment(TwoMaps.name, toy_root, "toy", tmp_path / "runs" / "two_maps",
                          progress=False, on_epoch=lambda e, n, losses: epochs.append((e, n, losses)))
    assert epochs == [(1, 1, {"loss": 0.0})]  # the epoch callback reaches the method
    return path


def test_prediction_checks_named_maps():
    maps = torch.zeros(2, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        Prediction(torch.zeros(2), maps, named_maps={"A_p": torch.zeros(2, 4, 4)})
    with pytest.raises(ValueError, match="map name"):
        Prediction(torch.zeros(2), maps, named_maps={"../x": maps})
    with pytest.raises(ValueError, match="without a named map"):
        Prediction(torch.zeros(2), maps, named_scores={"A_p": torch.zeros(2)})
    with pytest.raises(ValueError, match="reconstructions"):
        Prediction(torch.zeros(2), maps, reconstructions=torch.zeros(2, 1, 8, 8))
    scored = Prediction(torch.zeros(2), maps, named_maps={"A_p": maps + 1})
    assert torch.equal(scored.map_score("A_p"), torch.ones(2))  # no score given: the maximum


def test_run_stores_and_scores_every_named_map(run, toy_root):
    stored = load_run(run)
    metrics = stored.metrics
    assert set(metrics["maps"]) == {"A_p", "A_nf"}
    assert stored.map_names == ["A_nf", "A_p"]

    # metrics of each map from the model's own predictions at full size (160 px), computed
    # here with sklearn: the run scored the maps before storing 96 px copies
    cat = find_category(toy_root, "toy")
    method = restore_method(run)
    images = torch.stack([ImageSet(cat.test, SIZE)[i] for i in range(len(cat.test))])
    pred = method.predict(images)
    labels = np.array([s.label for s in cat.test])
    masks, include = ImageSet(cat.test, SIZE).masks()
    for name in ("A_p", "A_nf"):
        expected = roc_auc_score(labels, pred.map_score(name).numpy())
        assert metrics["maps"][name]["image_auroc"] == pytest.approx(expected, abs=1e-9)
        pixels = pred.named_maps[name].numpy()[include]
        expected_px = roc_auc_score(masks[include].ravel(), pixels.ravel())
        assert metrics["maps"][name]["pixel_auroc"] == pytest.approx(expected_px, abs=1e-6)
        assert metrics["maps"][name]["threshold"] is not None
    # A_nf is scored by the method's own score (mean), A_p by its maximum: they differ
    assert metrics["maps"]["A_nf"]["threshold"] != metrics["maps"]["A_p"]["threshold"]

    # stored display copies: at most DISPLAY_SIZE px, close to the full maps shrunk
    for name in ("primary", "A_p", "A_nf"):
        shown = stored.named_map(name)
        assert shown.shape == (len(cat.test), DISPLAY_SIZE, DISPLAY_SIZE)
        full = pred.anomaly_maps if name == "primary" else pred.named_maps[name]
        shrunk = torch.nn.functional.interpolate(full[:, None], size=DISPLAY_SIZE, mode="area")[:, 0]
        span = float(shrunk.max() - shrunk.min())
        assert np.abs(shown - shrunk.numpy()).max() <= 0.01 * span + 1e-6, name
        assert stored.map_stats_of(name)["p999"] >= stored.map_stats_of(name)["p50"]

    # reconstructions of a sample of test images, both labels, as uint8
    recon = stored.reconstructions
    assert 0 < len(recon) <= RECONSTRUCTION_SAMPLE
    assert {labels[i] for i in recon} == {0, 1}
    first = next(iter(recon.values()))
    assert first.dtype == np.uint8 and first.shape == (3, DISPLAY_SIZE, DISPLAY_SIZE)
    mean_shrunk = torch.nn.functional.interpolate(method.mean_image[None], size=DISPLAY_SIZE,
                                                  mode="area")[0]
    assert np.abs(first.astype(float) / 255 - mean_shrunk.numpy()).max() < 1 / 255 + 1e-6


def test_compare_page_picks_a_named_map_and_shows_the_reconstruction(run, monkeypatch, tmp_path):
    monkeypatch.setenv("KIT_RUNS_ROOT", str(run.parent))
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=90).run()
    assert not at.exception, [e.value for e in at.exception]
    picker = at.selectbox(key=f"cmp_mapname_{run.name}")
    assert picker.options[0].startswith("primary") and len(picker.options) == 3
    assert "image AUROC" in picker.options[1]

    images = at.selectbox(key="cmp_image")
    stored = load_run(run)
    with_recon = {stored.scores[i]["name"] for i in stored.reconstructions}
    pick = next(o for o in images.options if o.split("  ")[0] in with_recon)
    images.set_value(pick.split("  ")[0]).run()
    assert not at.exception
    captions = " ".join(m.value for m in at.markdown)
    assert "reconstruction" in captions
    assert len(at.image) == 3  # the test image, its ground truth and the reconstruction

    at.selectbox(key=f"cmp_mapname_{run.name}").set_value("A_p").run()
    assert not at.exception
    specs = [n.proto.spec for n in walk(at.main) if getattr(n, "type", None) == "plotly_chart"]
    assert any("map A_p" in spec for spec in specs)


def walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from walk(child)
