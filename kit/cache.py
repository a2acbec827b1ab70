"""An on-disk cache of frozen-backbone features, one small ``.npy`` file per (image, transform).

A frozen backbone gives the same features for the same image, transform and extractor every
time, so methods that look at each training image under many transforms (DifferNet) compute
those features once and read them back afterwards: the second fit of a setting, every
ablation variant that shares it, and re-scoring a run skip the backbone.

Layout::

    <kit.paths.cache_dir()>/features/<spec>/<image key[:2]>/<image key>-<transform key>.npy

- ``spec``: hash of everything about the extractor that changes its output: backbone name,
  weights, layers, pooling, scales, image size (the caller passes them as a dict; the dict
  itself is kept in ``<spec>/spec.json`` so a folder can be identified by eye).
- image key: for a file, hash of its resolved path, size and mtime (:func:`file_key`); for an
  in-memory image, hash of its pixels quantised to uint8 (:func:`tensor_key`).
- transform key: hash of the transform parameters rounded to 1e-6 (:func:`params_key`).

Files are written to a temporary name and renamed into place, so a reader never sees half a
file, and two processes filling the same cache at once are harmless. Files are read with
``np.load(allow_pickle=False)``; an unreadable file counts as a miss and is replaced.
The cache is safe to delete at any time (``rm -rf .cache/features``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from kit.paths import cache_dir

__all__ = ["FeatureCache", "file_key", "tensor_key", "params_key"]


def _digest(text: str | bytes, n: int = 20) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha1(data).hexdigest()[:n]


def file_key(path: Path | str, image_size: int) -> str:
    """Key of an image file read at ``image_size``: resolved path + file size + mtime (ns)."""
    p = Path(path).resolve()
    st = p.stat()
    return _digest(f"{p}|{st.st_size}|{st.st_mtime_ns}|{int(image_size)}")


def tensor_key(image: torch.Tensor) -> str:
    """Key of one image ``[3, S, S]`` float in [0, 1] by content (pixels quantised to uint8)."""
    q = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    return _digest(f"{tuple(q.shape)}".encode() + q.numpy().tobytes())


def params_key(params: Sequence[float]) -> str:
    """Key of a transform given as a few numbers (e.g. angle, brightness, contrast)."""
    return _digest(",".join(f"{float(v):.6f}" for v in params), 12)


class FeatureCache:
    """Feature vectors keyed by (image key, transform key) under one extractor ``spec``.

    ``get`` returns a float32 ``np.ndarray`` or ``None``; ``put`` stores one. ``hits`` and
    ``misses`` count lookups (tests use them to prove the backbone was skipped).
    ``enabled=False`` turns every call into a miss / no-op without touching the disk.
    """

    def __init__(self, spec: dict[str, Any], root: Path | str | None = None,
                 dtype: str = "float32", enabled: bool = True):
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
        self.spec = dict(spec)
        self.spec_hash = _digest(json.dumps(self.spec, sort_keys=True, default=str))
        self.root = Path(root) if root is not None else cache_dir() / "features"
        self.folder = self.root / self.spec_hash
        self.dtype = np.dtype(dtype)
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self._spec_written = False

    def path(self, image_key: str, transform_key: str) -> Path:
        return self.folder / image_key[:2] / f"{image_key}-{transform_key}.npy"

    def get(self, image_key: str, transform_key: str) -> np.ndarray | None:
        if not self.enabled:
            self.misses += 1
            return None
        path = self.path(image_key, transform_key)
        try:
            value = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, EOFError):  # truncated or foreign file: recompute it
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return value.astype(np.float32, copy=False)

    def put(self, image_key: str, transform_key: str, value: np.ndarray | torch.Tensor) -> None:
        if not self.enabled:
            return
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        path = self.path(image_key, transform_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self._spec_written:
            spec_file = self.folder / "spec.json"
            if not spec_file.exists():
                _atomic_write(spec_file, json.dumps(self.spec, indent=1, sort_keys=True, default=str).encode())
            self._spec_written = True
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            np.save(f, np.asarray(value, dtype=self.dtype), allow_pickle=False)
            tmp = f.name
        os.replace(tmp, path)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        f.write(data)
        tmp = f.name
    os.replace(tmp, path)
