"""The run store: one folder per run, written atomically, validated on load.

A run folder holds (see docs/design.md)::

    config.json  metrics.json  scores.csv  maps.npz  curves.json  features.npz  checkpoint.pt

Writing goes to a hidden temporary folder beside the target that is renamed into place at
the end, so an interrupted run never leaves a folder that looks complete. Names given by users
(the dashboard, ``--name``) are checked so they cannot escape the runs root.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
import shutil
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

RUN_FILES = ("config.json", "metrics.json", "scores.csv", "maps.npz", "curves.json",
             "features.npz", "checkpoint.pt")
# What the kit may add to a finished run later (kit.deploy: python -m kit onnx), so a folder
# holding them is still a run folder that --overwrite may replace.
EXPORT_FILES = ("model.onnx", "onnx.json")
REQUIRED_METRICS = ("image_auroc", "pixel_auroc", "pixel_aupr", "aupro", "fit_seconds",
                    "infer_ms_per_image", "method", "backbone", "image_size", "budget", "seed",
                    "n_train", "n_test")
SCORE_COLUMNS = ("index", "name", "path", "defect_type", "label", "score", "pixel_included")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: "$" would let a newline end it
# What a replaced run folder may hold: the run's files and atomic_write_bytes' temporary ones.
_TMP_FILE = re.compile(r"\.[A-Za-z0-9._-]+\.[0-9a-f]{32}\.tmp")
# Hidden folders write_run makes beside a run: ".tmp-<name>-<pid>-<hex8>" while writing and
# ".trash-<name>-<pid>-<hex8>" while replacing; a pid that no longer runs left them behind.
_STAGING = re.compile(r"\.(tmp|trash)-(?P<name>.+)-(?P<pid>\d+)-[0-9a-f]{8}")
_LEGACY_STAGING = re.compile(r"\.(tmp|trash)-.+-[0-9a-f]{8}")  # before the pid was in the name
LEGACY_STAGING_AGE_S = 24 * 3600


class RunError(ValueError):
    """A run folder that is missing, broken or unsafe. The message names the path."""


def safe_run_dir(runs_root: Path | str, name: str) -> Path:
    """``runs_root / name`` after checking that ``name`` is a plain folder name.

    Letters, digits, ``.``, ``_`` and ``-`` only, not starting with a dot, at most 128 chars:
    no ``..``, no slashes, no absolute paths, so a run can never land outside the root.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise RunError(f"invalid run name {name!r}: use letters, digits, '.', '_' and '-' "
                       "(not starting with '.', no '..', at most 128 characters)")
    root = Path(runs_root).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise RunError(f"run name {name!r} escapes the runs root {root}")
    return path


def check_run_target(run_dir: Path | str, overwrite: bool = False) -> Path:
    """Refuse, before any work, a run folder that may not be written; returns its absolute path.

    A folder that exists is an error without ``overwrite``. With it, only a run folder (it
    holds nothing but the files a run has) or an empty folder is replaced: never a folder the
    kit did not write, such as ``--out .`` or a home directory.
    """
    run_dir = Path(run_dir).expanduser().absolute()
    if not run_dir.exists() and not run_dir.is_symlink():
        return run_dir
    if not overwrite:
        raise RunError(f"{run_dir}: exists already (pass overwrite=True / --overwrite to replace it)")
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise RunError(f"{run_dir}: refusing to replace it: it is not a folder but a "
                       f"{'link' if run_dir.is_symlink() else 'file'}")
    cwd = Path.cwd().resolve()
    if cwd == run_dir.resolve() or run_dir.resolve() in cwd.parents:
        raise RunError(f"{run_dir}: refusing to replace the current folder or one above it")
    foreign = sorted(p.name for p in run_dir.iterdir()
                     if not (p.name in RUN_FILES + EXPORT_FILES and p.is_file() and not p.is_symlink())
                     and not _TMP_FILE.fullmatch(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunError(f"{run_dir}: refusing to replace it: it is not a run folder (it holds "
                       f"{shown}). Only a run folder or an empty folder is replaced; choose "
                       "another --out")
    return run_dir


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def clean_stale_staging(parent: Path | str) -> list[Path]:
    """Remove the hidden staging folders an interrupted write (SIGKILL, power cut) left in
    ``parent``: those of a process that no longer runs, and pre-pid ones older than a day.
    Only folders whose names write_run makes are touched. Returns what was removed."""
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    for child in parent.iterdir():
        if not child.name.startswith((".tmp-", ".trash-")) or child.is_symlink() or not child.is_dir():
            continue
        match = _STAGING.fullmatch(child.name)
        if match:
            stale = int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"]))
        else:
            stale = bool(_LEGACY_STAGING.fullmatch(child.name)) and \
                time.time() - child.stat().st_mtime > LEGACY_STAGING_AGE_S
        if stale:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file via a temporary file in the same folder and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return np.asarray(obj).tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# px of the stored maps and reconstructions (metrics use full resolution). 96 keeps a quick
# DifferNet run on MTD under 30 MB beside its 26 MB flow; maps are smooth at this size (PaDiM's
# own grid is 64 x 64 at 256 px) and the dashboard draws them over the image at full size.
DISPLAY_SIZE = 96


def display_maps(maps: np.ndarray, size: int = DISPLAY_SIZE) -> np.ndarray:
    """``[N, S, S]`` -> ``[N, D, D]`` float32 with ``D = min(S, size)``, by area averaging.

    Runs keep their maps for display only; at S = 256 full-size maps were most of a run's
    disk. The metrics are computed on the full maps before this.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[-1] <= size and maps.shape[-2] <= size:
        return maps
    out = [torch.nn.functional.interpolate(torch.from_numpy(maps[i:i + 64])[:, None],
                                           size=(size, size), mode="area")[:, 0].numpy()
           for i in range(0, len(maps), 64)]
    return np.concatenate(out) if out else np.zeros((0, size, size), np.float32)


def _quantise(maps: np.ndarray) -> dict[str, np.ndarray]:
    """8 bits per pixel, square-root companded over ``[lo, hi]``: ``q = 255 sqrt(u)``.

    The square root spends the levels where normal values lie (near ``lo``); the largest
    error is about 0.4 % of ``hi - lo``, invisible on a colour scale.
    """
    maps = np.asarray(maps, dtype=np.float32)
    finite = maps[np.isfinite(maps)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    span = hi - lo if hi > lo else 1.0
    u = np.clip(np.nan_to_num((maps - lo) / span, nan=0.0), 0.0, 1.0)
    return {"q": np.round(255 * np.sqrt(u)).astype(np.uint8), "lo": np.float64(lo),
            "hi": np.float64(hi)}


def _dequantise(q: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (lo + (q.astype(np.float32) / 255.0) ** 2 * (hi - lo)).astype(np.float32)


def _map_arrays(key: str, maps: np.ndarray) -> dict[str, np.ndarray]:
    packed = _quantise(display_maps(maps))
    return {key: packed["q"], f"{key}_lo": packed["lo"], f"{key}_hi": packed["hi"]}


def _half_if_safe(values: np.ndarray) -> np.ndarray:
    """float16 for float arrays whose values it holds (features for embedding plots need no
    more), else unchanged; halves features.npz."""
    if values.dtype.kind != "f" or not values.size:
        return values
    finite = values[np.isfinite(values)]
    return values.astype(np.float16) if not finite.size or np.abs(finite).max() < 6e4 else values


def _to_uint8_images(images: np.ndarray, size: int = DISPLAY_SIZE) -> np.ndarray:
    """``[n, 3, S, S]`` in [0, 1] (or uint8) -> uint8 ``[n, 3, D, D]``."""
    images = np.asarray(images)
    x = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    if x.shape[-1] > size:
        x = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size),
                                            mode="area").numpy()
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def write_run(run_dir: Path | str, *, config: dict, metrics: dict, scores: list[dict],
              maps: np.ndarray, map_stats: dict, curves: dict,
              features: dict[str, dict[str, np.ndarray]], checkpoint: dict,
              named_maps: dict[str, np.ndarray] | None = None,
              named_map_stats: dict[str, dict] | None = None,
              reconstructions: tuple[np.ndarray, np.ndarray] | None = None,
              overwrite: bool = False) -> Path:
    """Write a complete run folder atomically and return its path.

    maps: ``[N, H, W]`` anomaly maps of the test images, in ``scores`` order; named_maps:
    ``{name: [N, H, W]}`` the method's further maps, with their normal-data statistics in
    named_map_stats. Maps are stored for display: at most ``DISPLAY_SIZE`` px, 8 bits
    (:func:`_quantise`). reconstructions: ``(test indices [n], images [n, 3, H, W])`` of a
    sample of test images, stored as uint8 at the display size.
    features: ``{space: {"x": [n, D], "label": [n], "split": [n] str}}``.
    """
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    if missing:
        raise RunError(f"{run_dir}: metrics lack {', '.join(missing)}")
    named_maps = named_maps or {}
    for name, values in {"maps": maps, **named_maps}.items():
        if len(scores) != len(values):
            raise RunError(f"{run_dir}: {len(scores)} score rows but {len(values)} {name}")
    run_dir = check_run_target(run_dir, overwrite)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(run_dir.parent)
    stamp = f"{run_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = run_dir.parent / f".tmp-{stamp}"
    tmp.mkdir()
    try:
        (tmp / "config.json").write_bytes(_json_bytes(config))
        (tmp / "metrics.json").write_bytes(_json_bytes(metrics))
        (tmp / "curves.json").write_bytes(_json_bytes(curves))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SCORE_COLUMNS)
        writer.writeheader()
        for row in scores:
            writer.writerow({k: row[k] for k in SCORE_COLUMNS})
        (tmp / "scores.csv").write_text(buf.getvalue())
        arrays = {"format": np.int64(2), **_map_arrays("maps", maps),
                  **{f"stat_{k}": np.asarray(v) for k, v in map_stats.items()}}
        for name, values in named_maps.items():
            arrays.update(_map_arrays(f"map_{name}", values))
            arrays.update({f"nstat_{name}__{k}": np.asarray(v)
                           for k, v in (named_map_stats or {}).get(name, {}).items()})
        if reconstructions is not None:
            index, images = reconstructions
            arrays["reconstruction_index"] = np.asarray(index, dtype=np.int64)
            arrays["reconstructions"] = _to_uint8_images(images)
        np.savez_compressed(tmp / "maps.npz", **arrays)
        arrays = {}
        for space, parts in features.items():
            for part, values in parts.items():
                arrays[f"{space}__{part}"] = _half_if_safe(np.asarray(values))
        np.savez_compressed(tmp / "features.npz", **arrays)
        torch.save(checkpoint, tmp / "checkpoint.pt")
        if run_dir.exists():  # overwrite: move the old run aside first, then drop it
            trash = run_dir.parent / f".trash-{stamp}"
            os.replace(run_dir, trash)
            os.replace(tmp, run_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir


@dataclass
class Run:
    """A validated run folder. Large parts (maps, features, checkpoint) load on first use."""

    path: Path
    config: dict
    metrics: dict
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        return self.config["method"]

    @cached_property
    def scores(self) -> list[dict]:
        """Rows of scores.csv with typed values."""
        with open(self.path / "scores.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["index"] = int(r["index"])
            r["label"] = int(r["label"])
            r["score"] = float(r["score"])
            r["pixel_included"] = r["pixel_included"] in ("True", "1", "true")
        return rows

    def _map_file(self, key: str) -> np.ndarray:
        with np.load(self.path / "maps.npz") as z:
            if key not in z.files:
                raise RunError(f"{self.path / 'maps.npz'}: holds no {key}")
            if f"{key}_lo" in z.files:  # display copies, 8 bits (runs since maps.npz format 2)
                return _dequantise(z[key], float(z[f"{key}_lo"]), float(z[f"{key}_hi"]))
            return z[key].astype(np.float32)  # older runs: full-size float16 / float32

    @cached_property
    def maps(self) -> np.ndarray:
        """The primary anomaly maps ``[N, D, D]`` float32 for display (:data:`DISPLAY_SIZE`
        px at most), rows in scores.csv order. Metrics were computed at full size."""
        return self._map_file("maps")

    @cached_property
    def map_names(self) -> list[str]:
        """Names of the method's further maps (``Prediction.named_maps``), sorted."""
        with np.load(self.path / "maps.npz") as z:
            return sorted(k[4:] for k in z.files if k.startswith("map_") and
                          not k.endswith(("_lo", "_hi")))

    def named_map(self, name: str | None) -> np.ndarray:
        """Maps ``[N, D, D]`` of a named map; ``None`` or ``"primary"`` = the primary ones."""
        if name in (None, "primary"):
            return self.maps
        if name not in self.map_names:
            raise RunError(f"{self.path}: no map named {name!r} (it has: primary"
                           + "".join(f", {n}" for n in self.map_names) + ")")
        return self._map_file(f"map_{name}")

    def map_stats_of(self, name: str | None) -> dict[str, float]:
        """Normal-data statistics of a named map (``None`` / ``"primary"``: :attr:`map_stats`)."""
        if name in (None, "primary"):
            return self.map_stats
        prefix = f"nstat_{name}__"
        with np.load(self.path / "maps.npz") as z:
            return {k[len(prefix):]: float(z[k]) for k in z.files if k.startswith(prefix)}

    @cached_property
    def map_stats(self) -> dict[str, float]:
        """Statistics of anomaly maps on held-out normal images (for display normalisation)."""
        with np.load(self.path / "maps.npz") as z:
            return {k[5:]: float(z[k]) for k in z.files if k.startswith("stat_")}

    @cached_property
    def reconstructions(self) -> dict[int, np.ndarray]:
        """``{test index: uint8 [3, D, D]}`` for the sample of test images whose
        reconstruction the run stored (empty for methods that reconstruct nothing)."""
        with np.load(self.path / "maps.npz") as z:
            if "reconstructions" not in z.files:
                return {}
            return {int(i): img for i, img in zip(z["reconstruction_index"], z["reconstructions"])}

    @cached_property
    def curves(self) -> dict:
        return json.loads((self.path / "curves.json").read_text())

    @cached_property
    def features(self) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        with np.load(self.path / "features.npz", allow_pickle=False) as z:
            for key in z.files:
                space, part = key.split("__", 1)
                values = z[key]
                out.setdefault(space, {})[part] = (values.astype(np.float32)
                                                   if values.dtype == np.float16 else values)
        return out

    def checkpoint(self) -> dict:
        """The checkpoint, loaded with ``weights_only=True`` (tensors and plain values only).

        RunError names the file when it is truncated, tampered with or holds objects other
        than those (a pickle payload is refused, never run)."""
        path = self.path / "checkpoint.pt"
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError,
                ValueError, KeyError, AttributeError, TypeError, IndexError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RunError(f"{path}: unreadable checkpoint, truncated, tampered with or not "
                           f"written by the kit ({type(err).__name__}: {first[:300]})") from None
        if not isinstance(ckpt, dict):
            raise RunError(f"{path}: not a kit checkpoint (it holds a {type(ckpt).__name__}, "
                           "not a dict)")
        return ckpt


def load_run(run_dir: Path | str) -> Run:
    """Open and validate a run folder; RunError names the folder and what is wrong."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"{path}: not a run folder (does not exist)")
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    if missing:
        raise RunError(f"{path}: broken run, missing {', '.join(missing)}")
    try:
        config = json.loads((path / "config.json").read_text())
        metrics = json.loads((path / "metrics.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path}: broken run, unreadable JSON ({err})") from None
    if not isinstance(config, dict) or "method" not in config:
        raise RunError(f"{path}: broken run, config.json is not an object with a 'method'")
    if not isinstance(metrics, dict):
        raise RunError(f"{path}: broken run, metrics.json is not an object "
                       f"(it holds {type(metrics).__name__})")
    lacking = [k for k in REQUIRED_METRICS if k not in metrics]
    if lacking:
        raise RunError(f"{path}: broken run, metrics.json lacks {', '.join(lacking)}")
    return Run(path=path, config=config, metrics=metrics)


def list_runs(runs_root: Path | str) -> tuple[list[Run], list[str]]:
    """``(valid runs sorted by name, messages about broken folders)`` under ``runs_root``.

    Hidden folders (temporary writes in progress) are skipped.
    """
    root = Path(runs_root)
    if not root.is_dir():
        return [], []
    runs, broken = [], []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        try:
            runs.append(load_run(child))
        except RunError as err:
            broken.append(str(err))
    return runs, broken
