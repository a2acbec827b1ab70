"""Every registered method's ``predict`` whatever gradient mode its caller chose, and whatever
batch its image is in.

The pipeline calls ``predict`` bare and each method picks its own no-grad or inference-mode
handling; a caller that wraps it in ``torch.inference_mode()`` (the dashboard's Try it page
did) must get the same finite scores and maps, not DifferNet's "element 0 of tensors does not
require grad".
"""

from __future__ import annotations

import pytest
import torch

from fixtures_runs import tiny_overrides
from kit.data import ImageSet, find_category
from kit.method import FitContext, load_methods, make_method

MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", sorted(load_methods()))
def test_predict_is_the_same_in_every_gradient_mode(name, toy_root):
    cat = find_category(toy_root, "toy")
    method = make_method(name, "quick", **tiny_overrides(name))
    method.fit(ImageSet(cat.train, method.config.image_size), FitContext(progress=False))
    images = torch.stack([ImageSet(cat.test, method.config.image_size)[i] for i in (0, len(cat.test) - 1)])
    bare = method.predict(images)
    s = method.config.image_size
    assert bare.image_scores.shape == (2,) and bare.anomaly_maps.shape == (2, s, s)
    # each image alone scores as inside the batch (batch_size is a runtime setting)
    for i in range(2):
        alone = method.predict(images[i:i + 1].clone())
        torch.testing.assert_close(alone.image_scores[0], bare.image_scores[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(alone.anomaly_maps[0], bare.anomaly_maps[i], rtol=1e-4, atol=1e-5)
    for mode, context in MODES.items():
        with context():
            got = method.predict(images.clone())  # made in the mode, as a caller's batch would be
        assert torch.isfinite(got.image_scores).all() and torch.isfinite(got.anomaly_maps).all(), mode
        torch.testing.assert_close(got.image_scores, bare.image_scores, msg=lambda m: f"{mode}: {m}")
        torch.testing.assert_close(got.anomaly_maps, bare.anomaly_maps, msg=lambda m: f"{mode}: {m}")
        assert got.anomaly_maps.float().std() > 0, f"{mode}: a constant map"
