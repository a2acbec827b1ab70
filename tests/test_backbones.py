"""Tests for kit.backbones: genuine offline weights, strict loading, the frozen extractor.

Nothing here contacts the network except a loopback HTTP server started by the test itself.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest
import torch
from skimage import data as skdata

from kit import backbones
from kit.backbones import (
    OFFLINE_WEIGHTS,
    BackboneError,
    FeatureExtractor,
    classify,
    create_backbone,
    load_offline_state_dict,
    offline_available,
    rename_lukemelas_keys,
)

LITE0 = "tf_efficientnet_lite0"
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0():
    """(model, mean, std) for Lite0 with its offline ImageNet weights."""
    return create_backbone(LITE0, weights="offline")


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor(LITE0, layers=(1, 2, 3), weights="offline")


@pytest.fixture(scope="module")
def images():
    """A fixed batch [2, 3, 256, 256] in [0, 1]."""
    gen = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 256, 256, generator=gen)


# --------------------------------------------------------------------------------------------
# offline weights are real


@pytest.mark.parametrize("name", sorted(OFFLINE_WEIGHTS))
def test_offline_packages_installed(name):
    assert offline_available(name)


def test_lite0_classifies_skimage_photos(lite0):
    model, mean, std = lite0
    cat_top, _ = classify(model, mean, std, skdata.chelsea())
    assert cat_top[0] in CAT_CLASSES
    coffee_top, coffee_p = classify(model, mean, std, skdata.coffee())
    assert coffee_top[0] == ESPRESSO
    assert coffee_p[0] > 0.8
    assert len(coffee_top) == len(coffee_p) == 5


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_larger_lites_see_espresso(name):
    model, mean, std = create_backbone(name, weights="offline")
    assert mean == std == (0.5, 0.5, 0.5)
    top, _ = classify(model, mean, std, skdata.coffee())
    assert top[0] == ESPRESSO


@pytest.mark.parametrize("name", sorted(OFFLINE_WEIGHTS))
def test_renamed_keys_cover_the_timm_model_exactly(name):
    import timm

    model = timm.create_model(name, pretrained=False)
    state = load_offline_state_dict(name, model)
    expected = model.state_dict()
    assert set(state) == set(expected)
    assert all(state[k].shape == expected[k].shape for k in expected)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_renaming_with_the_wrong_stage_layout_fails():
    import timm

    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    raw = torch.load(
        backbones._offline_file(OFFLINE_WEIGHTS[LITE0]), map_location="cpu", weights_only=True
    )
    with pytest.raises(BackboneError, match="blocks"):
        rename_lukemelas_keys(raw, [len(stage) for stage in lite1.blocks])


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


def test_auto_resolves_to_offline_for_lite():
    assert backbones.resolve_weights(LITE0, "auto") == "offline"


def test_extractor_is_frozen_and_stays_in_eval(extractor, images):
    assert not any(p.requires_grad for p in extractor.parameters())
    stats_before = {k: v.clone() for k, v in extractor.state_dict().items() if "running" in k}
    assert extractor.train() is extractor
    assert not any(m.training for m in extractor.modules())
    extractor(images)  # a forward after .train() must not update BatchNorm statistics
    stats_after = extractor.state_dict()
    assert all(torch.equal(v, stats_after[k]) for k, v in stats_before.items())


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
# weight sources and errors


def test_offline_for_other_models_lists_what_exists():
    with pytest.raises(BackboneError) as info:
        create_backbone("wide_resnet50_2", weights="offline")
    message = str(info.value)
    assert all(name in message for name in OFFLINE_WEIGHTS)
    assert "hub" in message and "internet" in message


def test_bad_names_and_paths_raise(tmp_path):
    with pytest.raises(BackboneError, match="no model"):
        create_backbone("not_a_real_model", weights="none")
    with pytest.raises(BackboneError, match="no model"):
        create_backbone("torchvision:not_a_real_model", weights="none")
    with pytest.raises(BackboneError, match="existing file"):
        create_backbone(LITE0, weights=str(tmp_path / "missing.pth"))


def test_normalisation_constants():
    _, mean, std = create_backbone("resnet18", weights="none")
    assert mean == pytest.approx(backbones.IMAGENET_MEAN)
    assert std == pytest.approx(backbones.IMAGENET_STD)
    _, mean, std = create_backbone("torchvision:alexnet", weights="none")
    assert (mean, std) == (backbones.IMAGENET_MEAN, backbones.IMAGENET_STD)


def _logits(model, seed=1):
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model((x - 0.5) / 0.5)


def test_local_paths_load_both_key_namings(lite0, tmp_path):
    model, _, _ = lite0
    timm_named = tmp_path / "lite0_timm.pth"
    torch.save(load_offline_state_dict(LITE0, model), timm_named)
    lukemelas_named = backbones._offline_file(OFFLINE_WEIGHTS[LITE0])
    reference = _logits(model)
    for path in (timm_named, lukemelas_named):
        loaded, mean, _ = create_backbone(LITE0, weights=str(path))
        assert mean == (0.5, 0.5, 0.5)
        assert torch.equal(_logits(loaded), reference)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback(tmp_path, monkeypatch):
    """Serve tmp_path/"served" on 127.0.0.1 at a free port; yields (folder, base URL, hits)."""
    folder = tmp_path / "served"
    folder.mkdir()
    # urllib honours proxy variables; loopback traffic must never be sent to a proxy.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    handler = type("Handler", (_QuietHandler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_url_weights_over_loopback(lite0, loopback, tmp_path):
    model, _, _ = lite0
    folder, base, hits = loopback
    staging = tmp_path / "staging.pth"
    torch.save(load_offline_state_dict(LITE0, model), staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    file_name = f"lite0_timm-{digest[:10]}.pth"  # the hash in the name is verified on download
    staging.rename(folder / file_name)
    cache = tmp_path / "cache"

    url = f"{base}/{file_name}"
    loaded, mean, std = create_backbone(LITE0, weights=url, cache_dir=cache)
    assert (cache / file_name).is_file()
    assert torch.equal(_logits(loaded), _logits(model))
    assert (mean, std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    # A second request is served from the cache without touching the server.
    fe = FeatureExtractor(LITE0, layers=(2,), weights=url, cache_dir=cache)
    assert fe.weights == url
    assert hits == [f"/{file_name}"]

    # Without cache_dir the download lands in TORCH_HOME (set to tmp_path by the fixture).
    create_backbone(LITE0, weights=url)
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / file_name).is_file()


def test_url_with_wrong_hash_is_rejected(lite0, loopback, tmp_path):
    model, _, _ = lite0
    folder, base, _ = loopback
    file_name = "lite0_timm-0000000000.pth"
    torch.save(load_offline_state_dict(LITE0, model), folder / file_name)
    cache = tmp_path / "cache"
    with pytest.raises(BackboneError, match="hash"):
        create_backbone(LITE0, weights=f"{base}/{file_name}", cache_dir=cache)
    assert not (cache / file_name).exists()


def test_url_that_is_missing_raises(loopback, tmp_path):
    _, base, _ = loopback
    with pytest.raises(BackboneError, match="could not fetch"):
        create_backbone(LITE0, weights=f"{base}/absent.pth", cache_dir=tmp_path / "cache")
