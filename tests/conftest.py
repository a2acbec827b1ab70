"""Shared fixtures: tiny generated datasets (fast unit tests) and the real data locations."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kit.paths import SAMPLE_ROOT, SHARED_DATA

torch.set_num_threads(2)

SUITE_KEY = "kit/last_full_suite"  # pytest's cache: how long the last full run took here
FULL_SUITE_MIN_TESTS = 150  # a run of at least this many tests counts as the full suite
_STARTED: list[float] = []


def pytest_report_header(config) -> str:
    """What ``make test`` is about to do, and how long it took here last time."""
    import time

    _STARTED.append(time.time())
    last = config.cache.get(SUITE_KEY, None) if config.cache else None
    if last:
        return (f"kit: the last full run on this machine took {last['seconds'] / 60:.0f} min "
                f"for {last['tests']} tests (load average then {last['load']:.1f})")
    return ("kit: no full run recorded on this machine yet; on 2 CPU cores expect roughly "
            "10 minutes when the machine is quiet and up to 30 when it is busy")


def pytest_sessionfinish(session, exitstatus) -> None:
    import time

    if not _STARTED or session.testscollected < FULL_SUITE_MIN_TESTS or not session.config.cache:
        return
    session.config.cache.set(SUITE_KEY, {"seconds": round(time.time() - _STARTED[0]),
                                         "tests": session.testscollected,
                                         "load": os.getloadavg()[0]})


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_toy_dataset(root: Path, category: str = "toy", n_train: int = 12, n_good: int = 4,
                     n_defect: int = 4, size: tuple[int, int] = (40, 48), gray: bool = True,
                     seed: int = 0) -> Path:
    """A tiny MVTec-layout dataset of smooth noise; defects are bright squares with masks.

    Sizes vary per image (as in MTD) so the resizing path is exercised.
    """
    rng = np.random.default_rng(seed)
    base = root / category

    def image(h: int, w: int) -> np.ndarray:
        img = rng.normal(110, 8, (h, w)).clip(0, 255).astype(np.uint8)
        return img if gray else np.stack([img] * 3, -1)

    for i in range(n_train):
        write_png(base / "train/good" / f"{i:03d}.png", image(size[0] + i % 3, size[1]))
    for i in range(n_good):
        write_png(base / "test/good" / f"{i:03d}.png", image(*size))
    for i in range(n_defect):
        img = image(*size)
        mask = np.zeros(size, np.uint8)
        y, x = 5 + 3 * i, 8 + 2 * i
        mask[y:y + 10, x:x + 10] = 255
        img[mask > 0] = 250
        write_png(base / "test/crack" / f"{i:03d}.png", img)
        write_png(base / "ground_truth/crack" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture
def toy_root(tmp_path: Path) -> Path:
    return make_toy_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The embedded real MTD subset shipped with the kit."""
    return SAMPLE_ROOT


@pytest.fixture(scope="session")
def sample_runs_root(tmp_path_factory) -> Path:
    """One runs root for the whole session's real-sample runs: the methods' quick-budget tests
    and the notebooks share it, as a user running things in one runs root does. A method's
    default run on the sample is fitted once and reused by its test, by the notebook whose
    ablation holds it and by 05_compare."""
    return tmp_path_factory.mktemp("sample_runs")


@pytest.fixture(scope="session")
def sample_default_run(sample_runs_root):
    """``make(method) -> Run``: the method's default quick run on the embedded sample, in the
    folder ``python -m kit bench --no-ablations`` uses, made on first use and reused after."""
    from kit.compare import default_runs
    from kit.paths import DEFAULT_CATEGORY

    def make(method: str):
        return default_runs(sample_runs_root, SAMPLE_ROOT, DEFAULT_CATEGORY, "quick",
                            methods=[method], progress=False)[0]

    return make


@pytest.fixture(scope="session")
def mtd_root() -> Path:
    """Full Magnetic Tile Defects beside the project (skips where it is absent)."""
    root = Path(os.environ.get("KIT_DATA_ROOT", SHARED_DATA / "mtd"))
    if not (root / "magnetic_tile").is_dir():
        pytest.skip(f"real MTD data not found at {root}")
    return root
