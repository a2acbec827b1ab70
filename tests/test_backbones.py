"""Tests for kit.backbones: building timm / torchvision networks and the frozen extractor.

Where the weights come from, and whether they are genuine, is tested in tests/test_weights.py.
"""

from __future__ import annotations

import pytest
import torch

from kit import backbones
from kit.backbones import FeatureExtractor, create_backbone
from kit.weights import BackboneError

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor(LITE0, layers=(1, 2, 3), weights="offline")


@pytest.fixture(scope="module")
def images():
    """A fixed batch [2, 3, 256, 256] in [0, 1]."""
    gen = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 256, 256, generator=gen)


# --------------------------------------------------------------------------------------------
# FeatureExtractor


def test_extractor_shapes_channels_strides(extractor, images):
    assert extractor.name == LITE0
    assert extractor.weights == "offline"
    assert extractor.channels == [24, 40, 112]
    assert extractor.strides == [4, 8, 16]
    maps = extractor(images)
    assert [tuple(m.shape) for m in maps] == [
        (2, c, 256 // s, 256 // s) for c, s in zip(extractor.channels, extractor.strides)
    ]


def test_extractor_is_frozen_and_stays_in_eval(extractor, images):
    assert not any(p.requires_grad for p in extractor.parameters())
    stats_before = {k: v.clone() for k, v in extractor.state_dict().items() if "running" in k}
    assert extractor.train() is extractor
    assert not any(m.training for m in extractor.modules())
    extractor(images)  # a forward after .train() must not update BatchNorm statistics
    stats_after = extractor.state_dict()
    assert all(torch.equal(v, stats_after[k]) for k, v in stats_before.items())
    # train() skips the walk over the body when nothing changed it; a body switched to
    # training directly is walked back to eval by the next train() or eval()
    extractor.body.train()
    assert extractor.eval() is extractor
    assert not any(m.training for m in extractor.modules())
    extractor.train(True)
    assert not any(m.training for m in extractor.modules())


def test_extractor_is_deterministic_and_builds_no_graph(extractor, images):
    first, second = extractor(images), extractor(images)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(m.grad_fn is None and not m.requires_grad for m in first)


def test_gradient_reaches_the_input(extractor, images):
    x = images[:1].clone().requires_grad_(True)
    with torch.enable_grad():
        maps = extractor(x)
        sum(m.square().mean() for m in maps).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in extractor.parameters())


def test_layer_order_and_feature_list_path_agree(extractor, images, monkeypatch):
    # Same layers in another order, through timm's FeatureListNet instead of
    # forward_intermediates: the maps must be identical and follow the requested order.
    monkeypatch.setattr(FeatureExtractor, "_use_intermediates", False)
    other = FeatureExtractor(LITE0, layers=(3, -4, 2), weights="offline")
    assert other.layers == [3, 1, 2]
    reference = extractor(images)
    maps = other(images)
    assert torch.equal(maps[0], reference[2])
    assert torch.equal(maps[1], reference[0])
    assert torch.equal(maps[2], reference[1])


def test_only_returns_a_subset_and_stops_early(extractor, images, monkeypatch):
    # NDP-Net re-encodes its reconstruction through the first stages only: the maps must be the
    # full forward's, in the asked order, on both timm paths and the torchvision one
    full = extractor(images)
    shallow = extractor(images, only=(2, 1))
    assert torch.equal(shallow[0], full[1]) and torch.equal(shallow[1], full[0])
    monkeypatch.setattr(FeatureExtractor, "_use_intermediates", False)
    listed = FeatureExtractor(LITE0, layers=(1, 2, 3), weights="offline")
    assert torch.equal(listed(images, only=(1,))[0], full[0])
    alex = FeatureExtractor("torchvision:alexnet", layers=(0, 2, -1), weights="none")
    x = torch.rand(1, 3, 96, 96)
    assert torch.equal(alex(x, only=(2,))[0], alex(x)[1])
    with pytest.raises(BackboneError, match="subset"):
        extractor(images, only=(0,))
    with pytest.raises(BackboneError, match="subset"):
        extractor(images, only=())


def test_extractor_rejects_bad_layers_and_inputs(extractor):
    with pytest.raises(BackboneError, match="out of range"):
        FeatureExtractor(LITE0, layers=(5,), weights="none")
    with pytest.raises(BackboneError, match="twice"):
        FeatureExtractor(LITE0, layers=(1, -4), weights="none")
    with pytest.raises(BackboneError, match=r"\[0, 1\]"):
        extractor(torch.full((1, 3, 32, 32), 200.0))
    with pytest.raises(BackboneError, match="B, 3, H, W"):
        extractor(torch.rand(3, 32, 32))


def test_alexnet_features_with_random_weights():
    fe = FeatureExtractor("torchvision:alexnet", layers=(0, 2, -1), weights="none")
    assert fe.channels == [64, 384, 256]
    assert fe.strides == [4, 16, 32]
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    maps = fe(x)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 55, 55), (2, 384, 13, 13), (2, 256, 6, 6)]
    maps[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# model creation


def test_bad_names_raise():
    with pytest.raises(BackboneError, match="no model"):
        create_backbone("not_a_real_model", weights="none")
    with pytest.raises(BackboneError, match="no model"):
        create_backbone("torchvision:not_a_real_model", weights="none")


def test_normalisation_constants():
    _, mean, std = create_backbone("resnet18", weights="none")
    assert mean == pytest.approx(backbones.IMAGENET_MEAN)
    assert std == pytest.approx(backbones.IMAGENET_STD)
    _, mean, std = create_backbone("torchvision:alexnet", weights="none")
    assert (mean, std) == (backbones.IMAGENET_MEAN, backbones.IMAGENET_STD)
