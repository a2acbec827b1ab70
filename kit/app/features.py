"""Feature-space page: t-SNE and UMAP of each feature space a run stores, side by side.

For PaDiM that is the backbone ("source") space; flow methods add their latent ("flow")
space. Points are the stored sample of training (normal) and test images. Projections are
cached twice: in memory (``st.cache_data``) and on disk (``kit.embedding``), so moving
between runs and back is quick.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from kit import embedding, plots
from kit.app import common
from kit.embedding import effective_params, run_stamp

TITLES = {"tsne": "t-SNE", "umap": "UMAP"}
CAVEAT = ("How to read these: cluster sizes and the gaps between clusters carry little meaning "
          "and move with perplexity / n_neighbors; look at whether defective (red) points "
          "separate from normal (blue) ones. A flow's latent space is trained towards one "
          "standard Gaussian, so it looks like one round blob by construction: anomalies show "
          "as points far from its centre, not as a separate cluster.")


@st.cache_data(show_spinner=False, max_entries=256)
def projection(path: str, stamp: int, space: str, algorithm: str, perplexity: float,
               n_neighbors: int, seed: int) -> np.ndarray:
    """``[n, 2]`` points; ``stamp`` keys the cache so a rewritten run is projected again."""
    return embedding.run_projection(path, space, algorithm, perplexity=perplexity,
                                    n_neighbors=n_neighbors, seed=seed)


def _panel(col, run, stamp: int, space: str, algorithm: str, perplexity: int, n_neighbors: int,
           seed: int, color_by: str, show_train: bool) -> None:
    """One projection of one space, with the caption that states its parameters."""
    part = run.features[space]
    n = len(part["x"])
    params = effective_params(n, algorithm, perplexity, n_neighbors)
    note = " (the first UMAP of a fresh install compiles numba code, ~30 s)" if algorithm == "umap" else ""
    with col, st.spinner(f"{TITLES[algorithm]} of the {space} space, {n} points{note}"):
        try:
            xy = projection(str(run.path), stamp, space, algorithm, float(perplexity),
                            int(n_neighbors), seed)
        except (ValueError, KeyError) as err:
            st.warning(f"{space}: cannot project ({err})")
            return
    keep = np.ones(n, bool) if show_train else part["split"] != "train"
    fig = plots.embedding_scatter(xy[keep], part["label"][keep], part["defect_type"][keep],
                                  part["split"][keep], color_by=color_by,
                                  title=f"{TITLES[algorithm]} · {space} space")
    col.plotly_chart(fig, key=f"fs_{algorithm}_{space}")
    knob = "perplexity" if algorithm == "tsne" else "n_neighbors"
    asked = perplexity if algorithm == "tsne" else n_neighbors
    used = params[knob]
    capped = f" (asked {asked}, capped for {n} points)" if float(asked) != float(used) else ""
    n_train = int((part["split"] == "train").sum())
    col.caption(f"{TITLES[algorithm]} · {knob} {used:g}{capped} · seed {seed} · {n} points: "
                f"{n_train} training (normal), {n - n_train} test ({int(part['label'].sum())} "
                f"defective) · {part['x'].shape[1]}-d, standardised, PCA to ≤ "
                f"{embedding.PCA_DIMS} dims first")


def render() -> None:
    st.title("Feature spaces")
    runs = common.require_runs()
    run = common.pick_one_run(runs)
    if run is None:
        st.info("No run for this dataset and category.")
        return
    spaces = run.features
    if not spaces:
        st.warning(f"{run.name} stores no feature samples.")
        return

    # knobs in one row, display choices in another: in one row of five, a 1280 px window cut
    # "Training images" and wrapped the colour choices
    cols = st.columns([3, 3, 2])
    perplexity = cols[0].slider("t-SNE perplexity", 2, 50, 30, key="fs_perplexity")
    n_neighbors = cols[1].slider("UMAP n_neighbors", 2, 50, 15, key="fs_neighbors")
    seed = int(cols[2].number_input("Seed", 0, 10_000, 0, key="fs_seed"))
    cols = st.columns([3, 2], vertical_alignment="bottom")
    color_by = cols[0].radio("Colour", ("label", "defect_type"), key="fs_color", horizontal=True,
                             format_func={"label": "normal vs defective",
                                          "defect_type": "defect type"}.get)
    show_train = cols[1].checkbox("Training images", value=True, key="fs_train",
                                  help="defect-free training images, drawn hollow")

    names = list(spaces)
    stamp = run_stamp(run.path)
    # two spaces or more: a row per algorithm, a column per space; one space: t-SNE | UMAP
    grid = [[(a, s) for s in names] for a in ("tsne", "umap")] if len(names) > 1 \
        else [[("tsne", names[0]), ("umap", names[0])]]
    if len(names) == 1:
        st.caption(f"{run.method} stores one feature space ({names[0]}); flow methods add their "
                   "latent space beside it.")
    for row in grid:
        for col, (algorithm, space) in zip(st.columns(len(row)), row):
            _panel(col, run, stamp, space, algorithm, perplexity, n_neighbors, seed, color_by,
                   show_train)
    st.info(CAVEAT)


if __name__ == "__main__":  # run as a page by st.navigation (not on import)
    render()
