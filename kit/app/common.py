"""What every dashboard page shares: the runs root, cached run loading, pickers, first start.

Caching: run folders are keyed by their path and :func:`kit.embedding.run_stamp` (latest
modification time), so a rewritten run is reloaded and an unchanged one is read once per
server process. ``st.cache_resource`` holds objects shared without copying (runs with their
maps, restored methods, dataset indexes); ``st.cache_data`` holds small values (the listing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from kit.data import Category, DataError, Sample, find_category, read_image, read_mask
from kit.embedding import run_stamp
from kit.paths import DEFAULT_CATEGORY, REPO_ROOT, SAMPLE_ROOT, default_runs_root, python_command
from kit.compare import map_scale  # noqa: F401  (the pages call common.map_scale)
from kit.runstore import Run, RunError, list_runs, load_run

DEMO_OVERRIDES: dict[str, Any] = {}  # settings of the first-start demo runs (tests make them tiny)
DEMO_METHODS: list[str] | None = None  # None = every registered method, as `python -m kit demo`
MAX_DEFAULT_RUNS = 3  # runs preselected in the pickers
PICTURE = {"displayModeBar": False}  # plotly config: the toolbar would cover small pictures' titles


# ---------------------------------------------------------------------------------------------
# run store
# ---------------------------------------------------------------------------------------------

def runs_root() -> Path:
    """The runs root chosen in the sidebar (``KIT_RUNS_ROOT`` or ``runs/`` by default)."""
    return Path(st.session_state.get("runs_root") or default_runs_root()).expanduser()


def _listing_signature(root: str) -> tuple[tuple[str, int], ...]:
    """``((folder name, stamp), ...)`` of the visible folders: changes when a run appears,
    disappears or is rewritten, which invalidates the cached listing."""
    path = Path(root)
    if not path.is_dir():
        return ()
    out = []
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            try:
                out.append((child.name, run_stamp(child)))
            except OSError:  # vanished while listing
                continue
    return tuple(out)


@st.cache_data(show_spinner=False, max_entries=32)
def _scan(root: str, signature: tuple) -> tuple[list[tuple[str, int]], list[str]]:
    """``([(run path, stamp)], [messages about broken folders])``; ``signature`` is the cache key."""
    runs, broken = list_runs(root)
    return [(str(r.path), run_stamp(r.path)) for r in runs], broken


@st.cache_resource(show_spinner=False, max_entries=24)  # full-MTD maps are ~80 MB a run
def get_run(path: str, stamp: int) -> Run:
    """A validated run; its maps and features load on first use and then stay in memory."""
    return load_run(path)


def all_runs(root: Path | str | None = None) -> tuple[list[Run], list[str]]:
    """``(valid runs sorted by name, messages about broken run folders)`` under the runs root."""
    root = str(root or runs_root())
    listed, broken = _scan(root, _listing_signature(root))
    runs = []
    for path, stamp in listed:
        try:
            runs.append(get_run(path, stamp))
        except RunError as err:  # broke after listing (deleted, half-copied)
            broken.append(str(err))
    return runs, broken


def clear_caches() -> None:
    _scan.clear()
    get_run.clear()
    get_category.clear()


# ---------------------------------------------------------------------------------------------
# data of the runs
# ---------------------------------------------------------------------------------------------

@st.cache_resource(show_spinner=False, ttl=600, max_entries=16)
def get_category(root: str, category: str) -> tuple[Category | None, str | None]:
    """``(index of the category, None)`` or ``(None, why it cannot be read)``."""
    try:
        return find_category(root, category), None
    except DataError as err:
        return None, str(err)


@st.cache_data(show_spinner=False, max_entries=512)
def load_image(path: str, size: int) -> np.ndarray:
    """RGB ``[S, S, 3]`` uint8, squashed to ``S x S`` as the methods saw it."""
    return read_image(path, size)


@st.cache_data(show_spinner=False, max_entries=512)
def load_mask(image_path: str, mask_path: str | None, size: int) -> np.ndarray:
    """Ground truth ``[S, S]`` bool (all False without a mask file)."""
    sample = Sample(Path(image_path), 1, "", Path(mask_path) if mask_path else None)
    return read_mask(sample, size)


def image_path(run: Run, row: dict) -> Path | None:
    """Where the test image of a scores.csv row is now, or None when the data moved away.

    Tries the stored path, then ``<data root>/<category>/test/<defect>/<file>`` from the run's
    config, then the stored path relative to the repository (runs made with a relative root).
    """
    stored = Path(row["path"])
    candidates = [stored] if stored.is_absolute() else []
    candidates.append(Path(run.config.get("data_root", "")) / run.config.get("category", "")
                      / "test" / row["name"])
    if not stored.is_absolute():
        candidates += [REPO_ROOT / stored, stored]
    return next((c for c in candidates if c.is_file()), None)


def mask_for(run: Run, row: dict) -> tuple[str | None, str | None]:
    """``(mask path or None, problem or None)`` of a test image, from the run's dataset index."""
    if int(row["label"]) == 0:
        return None, None
    cat, problem = get_category(run.config.get("data_root", ""), run.config.get("category", ""))
    if cat is None:
        return None, f"ground truth unavailable: {problem} (the data moved?)"
    for sample in cat.test:
        if sample.name == row["name"]:
            return (str(sample.mask_path) if sample.mask_path else None), None
    return None, f"{row['name']} is no longer in {cat.root / cat.name}"


def map_metric_line(run: Run, name: str) -> str:
    """``image AUROC 0.912 · pixel AUROC 0.951 ...`` of one map of a run (metrics.json)."""
    values = run.metrics if name == "primary" else (run.metrics.get("maps") or {}).get(name) or {}
    shown = [f"{label} {values[key]:.3f}" for key, label in
             (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO"))
             if isinstance(values.get(key), (int, float))]
    return " · ".join(shown) or "no metrics"


def verdict(label: int, score: float, threshold: float | None) -> str:
    """TP / FP / FN / TN of one image at the run's threshold ("-" without a threshold)."""
    if threshold is None:
        return "-"
    flagged = score >= threshold
    return ("TP" if flagged else "FN") if label else ("FP" if flagged else "TN")


# ---------------------------------------------------------------------------------------------
# labels and pickers
# ---------------------------------------------------------------------------------------------

def data_label(root: str) -> str:
    """Short name of a data root for menus (:func:`kit.report.data_label`, with the path)."""
    from kit.report import data_label as short_label

    path = Path(root)
    return "embedded sample (kit/sample)" if short_label(path) == "sample" else f"{path.name} ({path})"


def run_label(run: Run) -> str:
    m = run.metrics
    return f"{run.name} [{run.method}, {m.get('backbone', '?')}, {m.get('image_size', '?')}px]"


def keep_valid(key: str, options: list, fallback: Any = None) -> None:
    """Replace a remembered choice that is no longer offered (a run was deleted, another
    dataset was picked, a filter hid it) by ``fallback`` when offered, else the first option.

    Set before the widget is drawn. Assigning, not deleting the key: after a delete the
    server used the default but never told the browser, whose picker went on naming the
    old choice while the page showed another.
    """
    if key not in st.session_state or st.session_state[key] in options:
        return
    if options:
        st.session_state[key] = fallback if fallback in options else options[0]
    else:
        del st.session_state[key]


def keep_valid_many(key: str, options: list, default: list) -> None:
    """The multiselect version of :func:`keep_valid`: drop choices no longer offered, and
    start from ``default`` on the first visit or when none of the old choices is offered
    (another dataset was picked). Set before the widget is drawn, which then needs no
    ``default=`` of its own."""
    value = st.session_state.get(key)
    kept = [v for v in value or [] if v in options]
    if value is None or (value and not kept):
        st.session_state[key] = list(default)
    elif kept != value:
        st.session_state[key] = kept


def _by_count(values: list[str]) -> list[str]:
    """Distinct values, the most frequent first, ties by name."""
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sorted(counts, key=lambda v: (-counts[v], v))


def pick_dataset(runs: list[Run]) -> tuple[str, str, list[Run]]:
    """Data root and category pickers: ``(root, category, runs of that category)``."""
    # most runs first: the dataset a learner works on, not the one that sorts first
    roots = _by_count([r.config.get("data_root", "?") for r in runs])
    keep_valid("pick_root", roots)
    cols = st.columns(2)
    root = cols[0].selectbox("Dataset (data root)", roots, format_func=data_label, key="pick_root")
    cats = _by_count([r.config.get("category", "?") for r in runs if r.config.get("data_root") == root])
    keep_valid("pick_category", cats)
    category = cols[1].selectbox("Category", cats, key="pick_category")
    chosen = [r for r in runs if r.config.get("data_root") == root
              and r.config.get("category") == category]
    return root, category, chosen


def pick_runs(runs: list[Run], label: str = "Runs") -> list[Run]:
    """Dataset, category and several runs of it (any methods, any backbones)."""
    _, _, candidates = pick_dataset(runs)
    by_path = {str(r.path): r for r in candidates}
    options = list(by_path)
    keep_valid_many("pick_runs", options, default=options[:MAX_DEFAULT_RUNS])
    paths = st.multiselect(label, options, key="pick_runs",
                           format_func=lambda p: run_label(by_path[p]))
    return [by_path[p] for p in paths]


def pick_one_run(runs: list[Run], label: str = "Run") -> Run | None:
    """Dataset, category and one run of it."""
    _, _, candidates = pick_dataset(runs)
    by_path = {str(r.path): r for r in candidates}
    options = list(by_path)
    keep_valid("pick_run", options)
    if not options:
        return None
    path = st.selectbox(label, options, key="pick_run", format_func=lambda p: run_label(by_path[p]))
    return by_path[path]


# ---------------------------------------------------------------------------------------------
# sidebar, first start, training with a progress bar
# ---------------------------------------------------------------------------------------------

SHARED_KEYS = ("pick_root", "pick_category", "pick_runs", "pick_run")  # pickers every page shares


def keep_shared_choices() -> None:
    """Carry the dataset / run choices from page to page.

    Streamlit forgets a widget's value when a run does not draw it (a page switch); writing
    the value back into the session state before the page runs keeps it (Streamlit's
    documented recipe for multipage apps).
    """
    for key in SHARED_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def sidebar() -> None:
    """Runs root chooser and warnings about broken run folders (shown on every page)."""
    keep_shared_choices()
    with st.sidebar:
        st.text_input("Runs root", value=str(default_runs_root()), key="runs_root",
                      help="Folder holding run folders (env KIT_RUNS_ROOT, default runs/)")
        runs, broken = all_runs()
        st.caption(f"{len(runs)} run(s) under {runs_root()}")
        if st.button("Reload runs", key="reload_runs"):
            clear_caches()
            st.rerun()
        if broken:
            with st.expander(f"{len(broken)} broken run folder(s)", expanded=True):
                for message in broken:
                    st.warning(message)


def run_jobs(jobs: list[dict[str, Any]], label: str = "training") -> list[Path]:
    """Run ``kit.pipeline.run_experiment(**job)`` for each job under one progress bar.

    Each job's ``on_stage(stage, fraction)`` moves the bar; returns the run folders written.
    """
    from kit.pipeline import run_experiment  # torch-heavy: only when training

    bar = st.progress(0.0, text=f"{label}: starting")
    curve = st.empty()  # the live loss curve of methods that train (fit's epoch callback)
    done: list[Path] = []
    for i, job in enumerate(jobs):
        name = Path(job["out_dir"]).name
        losses: list[dict[str, float]] = []

        def on_stage(stage: str, fraction: float, i: int = i, name: str = name) -> None:
            overall = (i + max(0.0, min(1.0, fraction))) / len(jobs)
            bar.progress(overall, text=f"{label} {i + 1}/{len(jobs)} ({name}): {stage}")

        def on_epoch(epoch: int, epochs: int, loss: dict[str, float], name: str = name,
                     losses: list = losses) -> None:
            losses.append({"epoch": epoch, **loss})
            with curve.container():
                st.caption(f"{name}: training loss, epoch {epoch} of {epochs}")
                st.line_chart(pd.DataFrame(losses).set_index("epoch"), height=220)

        done.append(run_experiment(**job, progress=False, on_stage=on_stage, on_epoch=on_epoch))
    bar.progress(1.0, text=f"{label}: done")
    clear_caches()
    return done


def demo_jobs(root: Path, methods: list[str] | None = None) -> list[dict[str, Any]]:
    """Quick runs of every registered method on the embedded sample (as ``python -m kit demo``)."""
    from kit.method import load_methods

    names = methods or DEMO_METHODS or sorted(load_methods())
    return [dict(method_name=name, data_root=SAMPLE_ROOT, category=DEFAULT_CATEGORY,
                 out_dir=root / f"demo_{name}", budget="quick", overrides=dict(DEMO_OVERRIDES),
                 overwrite=True) for name in names]


def first_start(root: Path) -> None:
    """What to show when the runs root holds no run yet: how to make runs, or make them here."""
    python = python_command()
    st.info(f"No runs yet under `{root}`. Make quick ones on the embedded Magnetic Tile sample "
            "from a terminal, in the project folder:\n\n"
            f"```\nmake demo            # or: {python} -m kit demo\n```\n\n"
            f"or one run of your choice: `{python} -m kit fit --method padim --category "
            "magnetic_tile`; or press the button below (a few minutes on 2 CPU cores).")
    if st.button("Make quick demo runs on the embedded sample", key="make_demo", type="primary"):
        try:
            run_jobs(demo_jobs(root), label="demo run")
        except (DataError, RunError, ValueError, OSError) as err:
            st.error(f"could not make the demo runs: {err}")
            return
        st.success("Demo runs written.")
        st.rerun()


def page_runs(title: str) -> list[Run]:
    """A multi-run page's preamble: title, runs (or the first-start screen), the user's pick.

    Returns the picked runs; with none picked it says so and returns ``[]``.
    """
    st.title(title)
    chosen = pick_runs(require_runs())
    if not chosen:
        st.info("Pick at least one run above.")
    return chosen


def require_runs() -> list[Run]:
    """The valid runs; on an empty runs root show :func:`first_start` and stop the page."""
    runs, _ = all_runs()
    if not runs:
        first_start(runs_root())
        st.stop()
    return runs
