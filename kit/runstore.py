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
import re
import shutil
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

RUN_FILES = ("config.json", "metrics.json", "scores.csv", "maps.npz", "curves.json",
             "features.npz", "checkpoint.pt")
REQUIRED_METRICS = ("image_auroc", "pixel_auroc", "pixel_aupr", "aupro", "fit_seconds",
                    "infer_ms_per_image", "method", "backbone", "image_size", "budget", "seed",
                    "n_train", "n_test")
SCORE_COLUMNS = ("index", "name", "path", "defect_type", "label", "score", "pixel_included")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RunError(ValueError):
    """A run folder that is missing, broken or unsafe. The message names the path."""


def safe_run_dir(runs_root: Path | str, name: str) -> Path:
    """``runs_root / name`` after checking that ``name`` is a plain folder name.

    Letters, digits, ``.``, ``_`` and ``-`` only, not starting with a dot, at most 128 chars:
    no ``..``, no slashes, no absolute paths, so a run can never land outside the root.
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise RunError(f"invalid run name {name!r}: use letters, digits, '.', '_' and '-' "
                       "(not starting with '.', no '..', at most 128 characters)")
    root = Path(runs_root).resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise RunError(f"run name {name!r} escapes the runs root {root}")
    return path


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


def _compact(maps: np.ndarray) -> np.ndarray:
    """float16 halves the largest file of a run; keep float32 where values would overflow it."""
    maps = np.asarray(maps, dtype=np.float32)
    finite_max = float(np.abs(maps).max()) if maps.size else 0.0
    return maps.astype(np.float16) if finite_max < 6e4 else maps


def write_run(run_dir: Path | str, *, config: dict, metrics: dict, scores: list[dict],
              maps: np.ndarray, map_stats: dict, curves: dict,
              features: dict[str, dict[str, np.ndarray]], checkpoint: dict,
              overwrite: bool = False) -> Path:
    """Write a complete run folder atomically and return its path.

    maps: ``[N, H, W]`` anomaly maps of the test images, in ``scores`` order (stored float16
    unless their values exceed float16's range).
    features: ``{space: {"x": [n, D], "label": [n], "split": [n] str}}``.
    """
    run_dir = Path(run_dir).resolve()
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    if missing:
        raise RunError(f"{run_dir}: metrics lack {', '.join(missing)}")
    if len(scores) != len(maps):
        raise RunError(f"{run_dir}: {len(scores)} score rows but {len(maps)} maps")
    if run_dir.exists() and not overwrite:
        raise RunError(f"{run_dir}: exists already (pass overwrite=True / --overwrite)")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = run_dir.parent / f".tmp-{run_dir.name}-{uuid.uuid4().hex[:8]}"
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
        np.savez_compressed(tmp / "maps.npz", maps=_compact(maps),
                            **{f"stat_{k}": np.asarray(v) for k, v in map_stats.items()})
        arrays = {}
        for space, parts in features.items():
            for part, values in parts.items():
                arrays[f"{space}__{part}"] = np.asarray(values)
        np.savez_compressed(tmp / "features.npz", **arrays)
        torch.save(checkpoint, tmp / "checkpoint.pt")
        if run_dir.exists():  # overwrite: move the old run aside first, then drop it
            trash = run_dir.parent / f".trash-{run_dir.name}-{uuid.uuid4().hex[:8]}"
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

    @cached_property
    def maps(self) -> np.ndarray:
        """Anomaly maps ``[N, H, W]`` (float16, or float32 for large values), rows in scores.csv order."""
        with np.load(self.path / "maps.npz") as z:
            return z["maps"]

    @cached_property
    def map_stats(self) -> dict[str, float]:
        """Statistics of anomaly maps on held-out normal images (for display normalisation)."""
        with np.load(self.path / "maps.npz") as z:
            return {k[5:]: float(z[k]) for k in z.files if k.startswith("stat_")}

    @cached_property
    def curves(self) -> dict:
        return json.loads((self.path / "curves.json").read_text())

    @cached_property
    def features(self) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        with np.load(self.path / "features.npz", allow_pickle=False) as z:
            for key in z.files:
                space, part = key.split("__", 1)
                out.setdefault(space, {})[part] = z[key]
        return out

    def checkpoint(self) -> dict:
        return torch.load(self.path / "checkpoint.pt", map_location="cpu", weights_only=True)


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
        raise RunError(f"{path}: broken run, config.json has no 'method'")
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
