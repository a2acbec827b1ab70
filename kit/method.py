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
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import torch

from kit.data import ImageSet
from kit.devices import DEVICE_CHOICES, resolve_device
from kit.papers import Paper

if TYPE_CHECKING:
    from kit.synthetic import DefectGenerator

# Modules that define methods. Registering a new method = adding its module here.
METHODS_PACKAGE = "kit.methods"  # every module in it is a method file
BUDGETS = ("quick", "full")


@dataclass
class MethodConfig:
    """Settings every method shares. Subclasses add the paper's own fields."""

    backbone: str = "tf_efficientnet_lite0"  # timm name; offline Lite weights stand in for the papers' nets
    weights: str = "auto"  # "auto" | "offline" | "hub" | "none" | path or URL (see kit/weights.py)
    image_size: int = 256  # S: images are squashed to S x S; maps come back at S x S
    seed: int = 0  # seeds python, numpy and torch for the whole run
    budget: str = "quick"  # "quick" (CI-sized) or "full" (the paper's protocol)
    # images per predict call when scoring (and per eval-mode forward where a fit encodes
    # images): on 2 CPU cores most methods score fastest per image at 4, against 1, 8 and 16
    # (the batch column of benchmarks/bench_methods.py --batches, docs/results/speed.json)
    batch_size: int = 4
    val_fraction: float = 0.1  # share of train/good held out to pick the threshold (never the test split)
    threshold_quantile: float = 0.99  # image threshold = this quantile of held-out normal scores
    max_train_images: int | None = None  # seeded subset of the training images (few-shot experiments)
    device: str = "auto"  # "auto" (CUDA when torch sees it, else CPU), "cpu", "cuda" or "cuda:N"

    # Per-budget overrides of the fields above; subclasses fill these in.
    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {"quick": {}, "full": {}}
    # Inclusive (low, high) of numeric fields (of each item for tuples). Subclasses add theirs;
    # a value outside is refused when the config is built, before any image is read.
    LIMITS: ClassVar[dict[str, tuple[Any, Any]]] = {
        "image_size": (32, 2048), "seed": (0, 2**63 - 1), "batch_size": (1, 4096),
        "val_fraction": (0.0, 0.9), "threshold_quantile": (0.5, 1.0),
        "max_train_images": (1, 10_000_000),
    }

    # Settings that change where and how the work runs, not what is learned: a run made on
    # the GPU is the same experiment as one on the CPU, and every method scores an image
    # independently of its batch (tests/test_method_predict.py), so reuse and `fit --out`
    # ignore them.
    RUNTIME: ClassVar[tuple[str, ...]] = ("device", "batch_size")
    # Settings that only the scoring reads, never the fit: runs that differ in nothing else
    # learn the same model, so a grid or an ablation fits it once for all of them
    # (kit.pipeline.run_experiments). A subclass adds its own; a field listed here that the
    # fit does read would make those runs wrong, and tests/test_shared_fit.py checks each
    # method's list against runs fitted alone.
    SCORING: ClassVar[tuple[str, ...]] = ("threshold_quantile",)

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
        if not (self.device in DEVICE_CHOICES or re.fullmatch(r"cuda:\d+", self.device)):
            raise ConfigError(f"device={self.device!r}: use one of {', '.join(DEVICE_CHOICES)} "
                              "or cuda:N")

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


MAP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")  # named maps become file keys and metric keys


@dataclass
class Prediction:
    """Output of ``predict``; larger = more anomalous everywhere.

    - ``image_scores [B]`` and ``anomaly_maps [B, S, S]``: the method's primary result, the one
      its paper reports and the run's headline metrics score.
    - ``named_maps {name: [B, S, S]}``: optional further maps of the same model, e.g. the
      components of a combined map (CLS-CNFs' ``A_p`` and ``A_nf``) or one map per scale. The
      run scores each like the primary map, so a paper table whose columns are maps of one
      model comes from one trained model.
    - ``named_scores {name: [B]}``: image scores of named maps where the method defines them;
      a named map without one is scored by its maximum, as PaDiM scores its map.
    - ``reconstructions [B, 3, S, S]`` in [0, 1]: where the method reconstructs its input.
    """

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor
    named_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    named_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    reconstructions: torch.Tensor | None = None

    def __post_init__(self):
        b = self.image_scores.shape[0]
        if self.anomaly_maps.dim() != 3 or self.anomaly_maps.shape[0] != b:
            raise ValueError(f"anomaly_maps must be [B, S, S] with B={b}, got "
                             f"{list(self.anomaly_maps.shape)}")
        for name, value in {**self.named_maps, **self.named_scores}.items():
            if not MAP_NAME.fullmatch(name) or name == "primary":
                raise ValueError(f"map name {name!r}: use a letter, then letters, digits or _ "
                                 "(at most 32; 'primary' is the main map's)")
            if value.shape[0] != b:
                raise ValueError(f"{name}: {value.shape[0]} rows for {b} images")
        for name, value in self.named_maps.items():
            if tuple(value.shape) != tuple(self.anomaly_maps.shape):
                raise ValueError(f"named map {name}: shape {list(value.shape)}, the primary map "
                                 f"has {list(self.anomaly_maps.shape)}")
        unknown = set(self.named_scores) - set(self.named_maps)
        if unknown:
            raise ValueError(f"named_scores without a named map: {', '.join(sorted(unknown))}")
        r = self.reconstructions
        if r is not None and (r.dim() != 4 or r.shape[0] != b or r.shape[1] != 3
                              or r.shape[-2:] != self.anomaly_maps.shape[-2:]):
            raise ValueError(f"reconstructions must be [B, 3, S, S] like the maps, got {list(r.shape)}")

    def map_score(self, name: str) -> torch.Tensor:
        """Image scores ``[B]`` of the named map ``name``: the method's, else the map's maximum."""
        if name in self.named_scores:
            return self.named_scores[name]
        return self.named_maps[name].flatten(1).max(1).values


EpochCallback = Callable[[int, int, dict[str, float]], None]  # (epoch 1.., epochs, losses)


@dataclass
class FitContext:
    """What ``fit`` receives besides the training images. Nothing in it comes from the test split.

    - ``held_out``: the held-out normal images of ``train/good`` (early stopping, score
      normalisation, weights between maps); None when ``val_fraction`` is 0.
    - ``synthetic``: a seeded synthetic-defect generator over the training images
      (``kit.synthetic``), for methods that learn from synthetic defects; None where the caller
      gave none.
    - ``seed``, ``device``: the run's seed and the torch device the method works on.
    - ``on_epoch(epoch, epochs, losses)``: called after each epoch of a trained method; the
      dashboard draws a live loss curve with it. ``progress``: show progress bars.
    """

    held_out: ImageSet | None = None
    synthetic: "DefectGenerator | None" = None
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    on_epoch: EpochCallback | None = None
    progress: bool = True

    def epoch_done(self, epoch: int, epochs: int, **losses: float) -> None:
        """Report the end of ``epoch`` (1-based) of ``epochs`` with its losses."""
        if self.on_epoch is not None:
            self.on_epoch(epoch, epochs, {k: float(v) for k, v in losses.items()})


class AnomalyMethod(ABC):
    """Base class. Images are float ``[B, 3, S, S]`` in [0, 1] (see docs/design.md)."""

    name: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]]
    paper: ClassVar[Paper]  # title, paper values, ablations, budget notes: kit/papers/<name>.py
    feature_spaces: ClassVar[tuple[str, ...]] = ("source",)  # names of the spaces embed() returns

    def __init__(self, config: MethodConfig):
        self.config = config
        self.device = resolve_device(config.device)  # DeviceError now, not after the data is read
        self._fitted = False  # methods that use _check_input set it in fit() and load_state_dict()

    def _check_input(self, images: torch.Tensor) -> None:
        """Refuse to score before fit/load, or at another size than the model was fitted at;
        then put every module in eval mode."""
        if not self._fitted:
            raise RuntimeError(f"{self.name}: fit() or load_state_dict() first")
        if images.shape[-1] != self.config.image_size:
            raise ValueError(f"images are {images.shape[-1]} px, the model was fitted at "
                             f"{self.config.image_size} px")
        for module in self.modules():
            module.eval()

    def fit_context(self, context: FitContext | None) -> FitContext:
        """``context``, or for callers that give none (notebooks, tests) the plain one: the
        config's seed and device, no held-out images, no synthetic defects."""
        return context if context is not None else FitContext(seed=self.config.seed,
                                                              device=self.device)

    @abstractmethod
    def fit(self, train: ImageSet, context: FitContext | None = None) -> dict[str, Any]:
        """Learn from defect-free images. Returns a training log (e.g. loss per epoch)."""

    @abstractmethod
    def predict(self, images: torch.Tensor) -> Prediction:
        """Scores and maps for a batch ``[B, 3, S, S]``."""

    @abstractmethod
    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One ``[B, D]`` feature vector per image for each name in ``feature_spaces``."""

    def modules(self) -> list[torch.nn.Module]:
        """The torch modules the method holds (backbone, flows, ...), for parameter counts and
        moving to a device. Default: every ``nn.Module`` attribute."""
        return [v for v in vars(self).values() if isinstance(v, torch.nn.Module)]

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
