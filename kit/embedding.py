"""2-D projections (t-SNE, UMAP) of the feature samples a run stores, with a disk cache.

A run's ``features.npz`` holds, per feature space (``"source"``, ``"flow"``, ...), ``x [n, D]``
with ``label [n]`` (1 = defective), ``split [n]`` ("train"/"test") and ``defect_type [n]``.
:func:`run_projection` turns one space into ``[n, 2]`` points, seeded, and keeps the result
under ``kit.paths.cache_dir() / "embeddings"``, keyed by the run's path and modification time,
the space and every parameter, so the dashboard and the notebooks share projections and a
rewritten run never shows a stale picture.

Reading the pictures: sizes of and gaps between clusters mean little and move with
``perplexity`` / ``n_neighbors``; a flow's latent space is trained towards N(0, I), so it
looks like one Gaussian blob by construction. Compare the colours of normal and defective
points, not the shapes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np

from kit.paths import cache_dir

ALGORITHMS = ("tsne", "umap")
PCA_DIMS = 50  # both algorithms see at most 50 PCA components: faster, and the usual practice
_CACHE_VERSION = 1  # bump when the projection code changes, so old pictures are recomputed


def run_stamp(run_dir: Path | str) -> int:
    """Latest modification time (ns) of a run folder and its files: changes when a run is rewritten."""
    path = Path(run_dir)
    stamps = [path.stat().st_mtime_ns]
    for child in ("config.json", "metrics.json", "maps.npz", "features.npz", "checkpoint.pt"):
        try:
            stamps.append((path / child).stat().st_mtime_ns)
        except OSError:  # a broken run: the folder's own time still identifies it
            pass
    return max(stamps)


def effective_params(n: int, algorithm: str, perplexity: float = 30.0,
                     n_neighbors: int = 15) -> dict[str, float]:
    """The parameters actually used for ``n`` points (both must stay below ``n``).

    t-SNE needs ``perplexity < n`` (we cap it at ``(n - 1) / 3``, sklearn's rule of thumb for
    a well-posed neighbourhood); UMAP needs ``n_neighbors < n``.
    """
    if algorithm == "tsne":
        return {"perplexity": float(max(1.0, min(perplexity, (n - 1) / 3.0)))}
    if algorithm == "umap":
        return {"n_neighbors": int(max(2, min(n_neighbors, n - 1)))}
    raise ValueError(f"unknown projection '{algorithm}' (choose from {', '.join(ALGORITHMS)})")


def _reduce(x: np.ndarray, seed: int) -> np.ndarray:
    """Standardise and keep at most ``PCA_DIMS`` principal components: ``[n, D] -> [n, d]``."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)  # flow latents and CNN features have very different scales
    d = min(PCA_DIMS, x.shape[0] - 1, x.shape[1])
    if d >= x.shape[1]:
        return x
    return PCA(n_components=d, random_state=seed).fit_transform(x)


def _enable_numba_cache() -> None:
    """Let umap-learn's numba functions cache their machine code on disk.

    umap-learn compiles ~250 numba functions without ``cache=True``, which costs 20-45 s in
    *every* new process on this 2-core machine; with caching it is paid once per install and
    a later fit of a few hundred points takes about a second. Harmless if numba changes:
    any failure just leaves compilation as it was.
    """
    try:
        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher
    except ImportError:
        return
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("umap", "pynndescent")):
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, Dispatcher) and isinstance(getattr(obj, "_cache", None), NullCache):
                try:
                    obj.enable_caching()
                except Exception:  # e.g. a function defined in a closure: stays uncached
                    pass


def project(x: np.ndarray, algorithm: str, *, perplexity: float = 30.0, n_neighbors: int = 15,
            seed: int = 0) -> np.ndarray:
    """Project features ``[n, D]`` to ``[n, 2]`` float32 with t-SNE or UMAP, seeded.

    Features are standardised and reduced to at most 50 PCA components first. Parameters are
    capped for small ``n`` (see :func:`effective_params`). One thread, so the result is the
    same on every machine with the same library versions.
    """
    from threadpoolctl import threadpool_limits

    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"need features [n >= 3, D]; got shape {x.shape}")
    params = effective_params(x.shape[0], algorithm, perplexity, n_neighbors)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap's "n_jobs overridden by random_state" and friends
        z = _reduce(x, seed)
        if algorithm == "tsne":
            from sklearn.manifold import TSNE

            out = TSNE(n_components=2, perplexity=params["perplexity"], init="pca",
                       random_state=seed).fit_transform(z)
        else:
            import umap

            _enable_numba_cache()
            out = umap.UMAP(n_components=2, n_neighbors=params["n_neighbors"], min_dist=0.1,
                            random_state=seed, n_jobs=1).fit_transform(z)
    return np.asarray(out, dtype=np.float32)


def _cache_file(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "embeddings" / f"{digest}.npz"


def run_projection(run_dir: Path | str, space: str, algorithm: str, *, perplexity: float = 30.0,
                   n_neighbors: int = 15, seed: int = 0, cache: bool = True) -> np.ndarray:
    """``[n, 2]`` projection of the run's stored features of ``space`` (rows as in features.npz).

    Cached on disk, keyed by the run's resolved path, :func:`run_stamp`, the space, the
    algorithm and its effective parameters and the seed.
    """
    from kit.runstore import load_run  # here, so `project` works without torch being imported

    run = load_run(run_dir)
    spaces = run.features
    if space not in spaces:
        raise KeyError(f"{run.path}: no feature space '{space}' (has: {', '.join(spaces)})")
    x = spaces[space]["x"]
    params = effective_params(len(x), algorithm, perplexity, n_neighbors)
    key = {"run": str(Path(run_dir).resolve()), "stamp": run_stamp(run_dir), "space": space,
           "algorithm": algorithm, "params": params, "seed": int(seed), "n": int(len(x)),
           "version": _CACHE_VERSION}
    path = _cache_file(key)
    if cache and path.is_file():
        try:
            with np.load(path) as z:
                return z["xy"]
        except (OSError, ValueError, KeyError):  # a truncated cache file: compute again
            pass
    xy = project(x, algorithm, perplexity=perplexity, n_neighbors=n_neighbors, seed=seed)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.npz")
        np.savez(tmp, xy=xy, key=json.dumps(key))
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    return xy
