"""What ``fit`` receives from the pipeline (``FitContext``): held-out normals that are neither
fit images nor test images, a seeded synthetic-defect generator, the seed, the device and the
epoch callback; nothing from the test split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from kit.data import ImageSet
from kit.method import METHODS, AnomalyMethod, FitContext, MethodConfig, Prediction, register
from kit.pipeline import run_experiment

SEEN: dict[str, Any] = {}


@dataclass
class SpyConfig(MethodConfig):
    image_size: int = 48  # S


class Spy(AnomalyMethod):
    """Records its context; scores images by their mean brightness."""

    name = "fit_context_spy"
    config_cls = SpyConfig

    def fit(self, train: ImageSet, context: FitContext | None = None) -> dict[str, Any]:
        context = self.fit_context(context)
        image = train[0]
        first, again = context.synthetic(image, key=7), context.synthetic(image, key=7)
        SEEN.update(fit=[s.name for s in train.samples],
                    held_out=[s.name for s in context.held_out.samples],
                    held_out_paths=[s.path for s in context.held_out.samples],
                    same_defect=torch.equal(first.image, again.image) and torch.equal(first.mask, again.mask),
                    changed=bool(first.mask.sum() > 0) and not torch.equal(first.image, image),
                    seed=context.seed, device=context.device)
        for epoch in (1, 2):
            context.epoch_done(epoch, 2, loss=1.0 / epoch)
        return {}

    def predict(self, images: torch.Tensor) -> Prediction:
        maps = images.mean(1)
        return Prediction(maps.flatten(1).mean(1), maps)

    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"source": images.mean(dim=(2, 3))}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@pytest.fixture
def spy():
    register(Spy)
    SEEN.clear()
    yield Spy
    METHODS.pop(Spy.name, None)


def test_fit_gets_held_out_normals_synthetic_defects_seed_device_and_epochs(spy, toy_root, tmp_path):
    epochs = []
    run = run_experiment(Spy.name, toy_root, "toy", tmp_path / "run", seed=3, progress=False,
                         overrides={"val_fraction": 0.25},
                         on_epoch=lambda e, n, losses: epochs.append((e, n, losses["loss"])))
    config = json.loads((run / "config.json").read_text())
    assert SEEN["held_out"] == config["val_images"] and SEEN["held_out"]
    assert SEEN["fit"] == config["fit_images"]
    assert not set(SEEN["held_out"]) & set(SEEN["fit"])
    test_paths = {r.split(",")[2] for r in (run / "scores.csv").read_text().splitlines()[1:]}
    assert all("/train/good/" in str(p) for p in SEEN["held_out_paths"])
    assert not {str(p) for p in SEEN["held_out_paths"]} & test_paths  # never a test image
    assert SEEN["same_defect"] and SEEN["changed"]  # seeded per key, and a real defect
    assert SEEN["seed"] == 3
    assert SEEN["device"] == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert epochs == [(1, 2, 1.0), (2, 2, 0.5)]


def test_fit_without_a_context_gets_the_plain_one(spy):
    method = Spy(SpyConfig(seed=5))
    context = method.fit_context(None)
    assert context.seed == 5 and context.held_out is None and context.synthetic is None
    assert context.device == method.device and context.progress
