"""Try-it page: score an uploaded image with every trained run of a category, and start a
quick training run that lands in the run store.

Uploads are checked before anything decodes them in full: at most 20 MB, an image PIL can
open, at most 64 megapixels. Bad input gives a message, never a traceback.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import streamlit as st
from PIL import Image, UnidentifiedImageError

from kit import plots
from kit.app import common
from kit.data import DataError, list_categories, rgb8
from kit.embedding import run_stamp
from kit.paths import SAMPLE_ROOT, default_data_root
from kit.runstore import RunError, safe_run_dir

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOAD_PIXELS = 64_000_000


class UploadError(ValueError):
    """An upload we refuse; the message says why in the learner's terms."""


def read_upload(data: bytes) -> np.ndarray:
    """Uploaded bytes -> RGB ``[H, W, 3]`` uint8; UploadError for anything else."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"file too large: {len(data) / 2**20:.1f} MB (limit 20 MB)")
    if not data:
        raise UploadError("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            with Image.open(io.BytesIO(data)) as img:
                # the header gives the size: refuse huge images before decoding any pixel
                if img.width * img.height > MAX_UPLOAD_PIXELS:
                    raise UploadError(f"image too large: {img.width}x{img.height} pixels (limit 64 MP)")
                img.load()
                return rgb8(img)  # 16-bit images scaled, not clipped to white
    except UploadError:
        raise
    except Image.DecompressionBombError:  # PIL's own limit (about 179 MP), hit while opening
        raise UploadError("image too large (over 64 MP)") from None
    except UnidentifiedImageError:
        raise UploadError("not an image PIL can read (PNG, JPEG, BMP, TIFF, ...)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UploadError(f"unreadable or truncated image ({err})") from None


@st.cache_resource(show_spinner=False, max_entries=6)
def get_method(path: str, stamp: int):
    """A run's method restored from its checkpoint (``stamp`` keys the cache)."""
    from kit.pipeline import restore_method

    return restore_method(path)


def score_image(method, rgb: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(image score, map [S, S], image [S, S, 3] uint8)`` of one RGB ``[H, W, 3]`` image,
    squashed to ``S x S`` as kit.data.read_image does and scored by kit.pipeline.score_images,
    as the run's own test images were."""
    import torch

    from kit.pipeline import score_images

    size = method.config.image_size
    small = np.array(Image.fromarray(rgb).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    scored = score_images(method, torch.from_numpy(small).permute(2, 0, 1)[None].contiguous())
    return float(scored.scores[0]), scored.maps[0], small


@st.cache_data(show_spinner=False, max_entries=64)
def score_upload(path: str, stamp: int, data: bytes) -> tuple[float, np.ndarray, np.ndarray]:
    """:func:`score_image` of the uploaded bytes with one run, cached: other widgets on the
    page rerun the script, and the image should not be scored again each time."""
    return score_image(get_method(path, stamp), read_upload(data))


def score_section(runs) -> None:
    st.subheader("Score your own image")
    categories = sorted({r.config.get("category", "?") for r in runs})
    if not categories:
        st.info("No trained run yet: train one below.")
        return
    category = st.selectbox("Category of the image", categories, key="try_category")
    trained = [r for r in runs if r.config.get("category") == category]
    upload = st.file_uploader("Image to score", key="try_upload", max_upload_size=20,
                              help="PNG, JPEG, BMP or TIFF; at most 20 MB and 64 megapixels")
    if upload is None:
        st.caption(f"It will be scored by the {len(trained)} run(s) of {category}.")
        return
    try:
        rgb = read_upload(upload.getvalue())
    except UploadError as err:
        st.error(f"{upload.name}: {err}")
        return
    st.caption(f"{upload.name}: {rgb.shape[1]}x{rgb.shape[0]} pixels, scored by {len(trained)} run(s)")
    per_row = min(len(trained), 3)
    for start in range(0, len(trained), per_row):
        cols = st.columns(per_row)
        for col, run in zip(cols, trained[start:start + per_row]):
            with col, st.spinner(f"restoring {run.name}"):
                try:
                    score, amap, small = score_upload(str(run.path), run_stamp(run.path),
                                                      upload.getvalue())
                except Exception as err:  # a checkpoint from another version, a missing backbone...
                    st.warning(f"{run.name}: cannot score with this run ({type(err).__name__}: {err})")
                    continue
            scale = common.map_scale(run)
            threshold = run.metrics.get("threshold")
            verdict = "-" if threshold is None else ("anomalous" if score >= threshold else "normal")
            shown = "none" if threshold is None else f"{threshold:.4g}"
            col.markdown(f"**{run.name}** · score {score:.4g} (threshold {shown}) → **{verdict}**")
            col.plotly_chart(plots.anomaly_map_figure(amap, scale, title="anomaly map"),
                             key=f"try_map_{run.name}", config=common.PICTURE)
            col.plotly_chart(plots.overlay_figure(small, amap, scale, title="overlay"),
                             key=f"try_overlay_{run.name}", config=common.PICTURE)
            col.caption(scale.describe())


def _parse_settings(text: str) -> dict:
    """``key=value key2=value2`` -> dict, each read as ``--set`` reads it."""
    from kit.method import parse_setting

    return dict(parse_setting(item) for item in text.split())


def train_section() -> None:
    from kit.method import load_methods

    st.subheader("Train a quick run")
    methods = sorted(load_methods())
    cols = st.columns(3)
    method = cols[0].selectbox("Method", methods, key="train_method",
                               index=methods.index("padim") if "padim" in methods else 0)
    roots = list(dict.fromkeys([str(SAMPLE_ROOT), str(default_data_root())]))
    root = cols[1].selectbox("Data root", roots, format_func=common.data_label, key="train_root")
    try:
        categories = list_categories(root)
    except DataError as err:
        st.error(str(err))
        return
    category = cols[2].selectbox("Category", categories, key="train_category")
    cols = st.columns(3)
    budget = cols[0].selectbox("Budget", ("quick", "full"), key="train_budget")
    seed = int(cols[1].number_input("Seed", 0, 10_000, 0, key="train_seed"))
    settings = cols[2].text_input("Settings (optional)", key="train_settings",
                                  placeholder="image_size=128 weights=none",
                                  help="key=value pairs, as `--set` on the command line")
    note = load_methods()[method].paper.budget_notes.get(budget)  # why the budget is what it is
    if note:
        st.caption(f"{budget} budget: {note}")
    name = st.text_input("Run name", value=f"{method}_{category}_{budget}_s{seed}", key="train_name")
    overwrite = st.checkbox("Replace a run of the same name", key="train_overwrite")
    if not st.button("Train", key="train_go", type="primary"):
        return
    root_dir = common.runs_root()
    try:
        out = safe_run_dir(root_dir, name)
        overrides = _parse_settings(settings)
    except (RunError, ValueError) as err:
        st.error(str(err))
        return
    if out.exists() and not overwrite:
        st.error(f"{out} exists already: choose another name or tick 'Replace'.")
        return
    job = dict(method_name=method, data_root=root, category=category, out_dir=out, budget=budget,
               seed=seed, overrides=overrides, overwrite=overwrite)
    try:
        written = common.run_jobs([job], label="training")[0]
    except (DataError, RunError, ValueError, OSError) as err:
        st.error(f"training failed: {err}")
        return
    st.success(f"Run written to {written}. It is now in every page's run list.")


def render() -> None:
    st.title("Try it")
    runs, broken = common.all_runs()
    for message in broken:
        st.warning(f"Skipped a broken run folder: {message}")
    if not runs:
        common.first_start(common.runs_root())
    score_section(runs)
    st.divider()
    train_section()


if __name__ == "__main__":  # run as a page by st.navigation (not on import)
    render()
