"""The method interface every detector in ``kit`` follows, and the registry of methods.

A method file (``kit/methods/padim.py``, ``kit/methods/differnet.py``, ...) holds a config dataclass with the
paper's values, and a class with ``fit``, ``predict``, ``embed``, ``state_dict`` and
``load_state_dict``. The pipeline, the CLI, the notebooks and the dashboard only talk to this
interface, so a new method appears everywhere once its file is in ``kit/methods/``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pkgutil
import random
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from kit.data import ImageSet

# Modules that define methods. Registering a new method = adding its module here.
METHODS_PACKAGE = "kit.methods"  # every module in it is a method file
BUDGETS = ("quick", "full")


@dataclass
class MethodConfig:
    """Settings every method shares. Subclasses add the paper's own fields."""

    backbone: str = "tf_efficientnet_lite0"  # timm name; offline Lite weights stand in for the papers' nets
    weights: str = "auto"  # "auto" | "offline" | "hub" | "none" | path or URL (see kit/backbones.py)
    image_size: int = 256  # S: images are squashed to S x S; maps come back at S x S
    seed: int = 0  # seeds python, numpy and torch for the whole run
    budget: str = "quick"  # "quick" (CI-sized) or "full" (the paper's protocol)
    batch_size: int = 8  # inference batch size
    val_fraction: float = 0.1  # share of train/good held out to pick the threshold (never the test split)
    threshold_quantile: float = 0.99  # image threshold = this quantile of held-out normal scores
    max_train_images: int | None = None  # seeded subset of the training images (few-shot experiments)

    # Per-budget overrides of the fields above; subclasses fill these in.
    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {"quick": {}, "full": {}}
    # Inclusive (low, high) of numeric fields (of each item for tuples). Subclasses add theirs;
    # a value outside is refused when the config is built, before any image is read.
    LIMITS: ClassVar[dict[str, tuple[Any, Any]]] = {
        "image_size": (32, 2048), "seed": (0, 2**63 - 1), "batch_size": (1, 4096),
        "val_fraction": (0.0, 0.9), "threshold_quantile": (0.5, 1.0),
        "max_train_images": (1, 10_000_000),
    }

    def __post_init__(self):
        """Check every field's type and range (``LIMITS``); ConfigError names the field.

        Values come from ``--set``, the dashboard's form and config.json, so they may be
        strings where numbers belong: a clear error now beats a traceback after minutes of
        feature extraction. Ints are accepted for floats and lists for tuples.
        """
        hints = typing.get_type_hints(type(self))
        limits: dict[str, tuple[Any, Any]] = {}
        for klass in reversed(type(self).__mro__):
            limits.update(vars(klass).get("LIMITS", {}))
        for f in dataclasses.fields(self):
            value = _checked(f.name, getattr(self, f.name), hints[f.name])
            if f.name in limits and value is not None:
                low, high = limits[f.name]
                for item in value if isinstance(value, tuple) else (value,):
                    if not low <= item <= high:
                        raise ConfigError(f"{f.name}={item!r} is out of range: it must be between "
                                          f"{low} and {high}")
            setattr(self, f.name, value)

    @classmethod
    def for_budget(cls, budget: str = "quick", **overrides: Any) -> "MethodConfig":
        """Defaults, then the budget's overrides, then the caller's overrides."""
        if budget not in cls.BUDGETS:
            raise ValueError(f"unknown budget '{budget}' (choose from {', '.join(cls.BUDGETS)})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise ConfigError(f"unknown setting(s) for {cls.__name__}: {', '.join(sorted(unknown))} "
                              f"(its settings: {', '.join(sorted(names))})")
        values = {**cls.BUDGETS[budget], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(budget=budget, **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MethodConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
        return cls(**kwargs)


class ConfigError(ValueError):
    """A setting of the wrong type or out of range. The message names the setting."""


def parse_setting(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value)``, the value read as JSON where it is JSON (numbers,
    lists -> tuples, true/false, null) and kept as text otherwise. ``--set`` and the
    dashboard's settings field both read settings this way; the config then checks them."""
    if "=" not in text:
        raise ConfigError(f"a setting must be key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), tuple(value) if isinstance(value, list) else value


def _checked(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` names (int, float, bool, str, tuples, ``X | None``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        return _checked(name, value, kinds[0]) if len(kinds) == 1 else value
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{name} must be a list such as [1, 2], got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            kinds = [args[0]] * len(value)
        elif len(args) != len(value):
            raise ConfigError(f"{name} must have {len(args)} items, got {value!r}")
        else:
            kinds = list(args)
        return tuple(_checked(f"{name}[{i}]", v, k) for i, (v, k) in enumerate(zip(value, kinds)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        whole = isinstance(value, float) and value.is_integer()  # JSON reads 1e3 as a float
        if isinstance(value, bool) or not (isinstance(value, (int, np.integer)) or whole):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{name} must be text, got {value!r}")
    return value


@dataclass
class Prediction:
    """Output of ``predict``: ``image_scores [B]`` and ``anomaly_maps [B, S, S]``; larger = more anomalous."""

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor


@dataclass
class AblationVariant:
    """One column of a paper's ablation table: the overrides that make it and the paper's value."""

    label: str
    overrides: dict[str, Any]
    paper_value: float | None = None  # in [0, 1]; None where the paper gives no number


@dataclass
class Ablation:
    """A paper's ablation study, run as one run per variant (tagged in the run's config)."""

    name: str
    title: str
    metric: str  # key of metrics.json, e.g. "image_auroc"
    paper_dataset: str  # where the paper's numbers come from, e.g. "MVTec AD mean"
    variants: list[AblationVariant] = field(default_factory=list)
    note: str = ""


class AnomalyMethod(ABC):
    """Base class. Images are float ``[B, 3, S, S]`` in [0, 1] (see docs/design.md)."""

    name: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]]
    title: ClassVar[str] = ""  # human name, e.g. "DifferNet (Rudolph et al., WACV 2021)"
    feature_spaces: ClassVar[tuple[str, ...]] = ("source",)  # names of the spaces embed() returns
    paper_results: ClassVar[dict[str, dict[str, float]]] = {}  # {"mtd": {"image_auroc": 0.977}}
    ablations: ClassVar[tuple[Ablation, ...]] = ()

    def __init__(self, config: MethodConfig):
        self.config = config

    @abstractmethod
    def fit(self, train: ImageSet, progress: bool = True) -> dict[str, Any]:
        """Learn from defect-free images. Returns a training log (e.g. loss per epoch)."""

    @abstractmethod
    def predict(self, images: torch.Tensor) -> Prediction:
        """Scores and maps for a batch ``[B, 3, S, S]``."""

    @abstractmethod
    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One ``[B, D]`` feature vector per image for each name in ``feature_spaces``."""

    def inference_info(self) -> dict[str, Any]:
        """Facts a timing needs beside it, e.g. how many views came from a feature cache.

        The pipeline stores them in ``metrics.json`` under ``inference_info``. Default: none.
        """
        return {}

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to predict again: tensors and plain Python values only."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()`` (loaded with ``torch.load(weights_only=True)``)."""


METHODS: dict[str, type[AnomalyMethod]] = {}


def register(cls: type[AnomalyMethod]) -> type[AnomalyMethod]:
    """Class decorator that adds a method to ``METHODS`` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def method_modules() -> list[str]:
    """Names of the modules in ``kit/methods/`` (found on disk, sorted)."""
    package = importlib.import_module(METHODS_PACKAGE)
    return sorted(f"{METHODS_PACKAGE}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                  if not m.name.startswith("_"))


def load_methods() -> dict[str, type[AnomalyMethod]]:
    """Import every module of ``kit/methods/`` and return the registry."""
    for module in method_modules():
        importlib.import_module(module)
    return METHODS


def method_class(name: str) -> type[AnomalyMethod]:
    methods = load_methods()
    if name not in methods:
        raise ValueError(f"unknown method '{name}' (available: {', '.join(sorted(methods))})")
    return methods[name]


def make_method(name: str, budget: str = "quick", **overrides: Any) -> AnomalyMethod:
    """Build a method with the budget's defaults and the caller's overrides."""
    cls = method_class(name)
    return cls(cls.config_cls.for_budget(budget, **overrides))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so a CPU run gives the same numbers twice."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
