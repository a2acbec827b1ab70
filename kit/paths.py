"""Where things live: the repository, the embedded sample, real data and runs.

Resolution order for the data root (the folder that holds category folders such as
``magnetic_tile`` or ``bottle``):

1. an explicit ``--data-root`` / function argument,
2. the ``KIT_DATA_ROOT`` environment variable,
3. ``../shared/data/mtd`` beside the repository, when it exists (real data for development),
4. the embedded sample shipped inside the package (always there).
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
SAMPLE_ROOT = PACKAGE_DIR / "sample"  # embedded MTD subset, see kit/sample/SOURCE.txt
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SHARED_SEEDS = REPO_ROOT.parent / "shared" / "seeds"  # the papers' text (kit/papers: Paper.seed_file)
DEFAULT_CATEGORY = "magnetic_tile"


def default_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data root to use when the caller gave ``explicit`` (may be None)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("KIT_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    real = SHARED_DATA / "mtd"
    if real.is_dir():
        return real
    return SAMPLE_ROOT


def dtd_root() -> Path | None:
    """Describable Textures (anomaly sources for synthetic defects), or None if absent."""
    env = os.environ.get("KIT_DTD_ROOT")
    if env:
        return Path(env).expanduser()
    real = SHARED_DATA / "dtd" / "images"
    return real if real.is_dir() else None


def default_runs_root(explicit: str | os.PathLike | None = None) -> Path:
    """Folder that holds run folders: argument, ``KIT_RUNS_ROOT``, else ``<repo>/runs``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("KIT_RUNS_ROOT")
    return Path(env).expanduser() if env else REPO_ROOT / "runs"


def cache_dir() -> Path:
    """Feature and download cache: ``KIT_CACHE_DIR`` or ``<repo>/.cache``."""
    env = os.environ.get("KIT_CACHE_DIR")
    return Path(env).expanduser() if env else REPO_ROOT / ".cache"


def python_command() -> str:
    """How a user should call this Python in a shell, for commands the kit prints.

    ``.venv/bin/python`` when the running interpreter is the project's venv (``make setup``):
    a bare ``python`` there is usually the system one, without torch or the kit.
    """
    import sys

    exe = Path(sys.executable)
    venv = REPO_ROOT / ".venv"
    try:
        exe.relative_to(venv)
    except ValueError:
        return "python"
    return ".venv/bin/python"


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The git commit of the kit's source (``abc1234``, with ``+dirty`` when a tracked file
    under ``kit/`` or ``benchmarks/`` differs from it; generated results do not count), so runs
    and grids made by different code can be told apart; None outside a git checkout or
    without git. Asked once per process, and a run or grid asks before its work begins, so
    an edit made while it runs is not credited to it."""
    def git(*args: str) -> str:
        # --no-optional-locks: never take .git/index.lock, which a user's own commit needs
        return subprocess.run(["git", "--no-optional-locks", "-C", str(REPO_ROOT), *args],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    if not (REPO_ROOT / ".git").exists():
        return None
    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "kit", "benchmarks")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit
