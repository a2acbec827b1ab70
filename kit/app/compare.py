"""Compare page: one test image, its ground truth, and every chosen run's map and overlay.

Each run keeps its own fixed colour scale (from held-out normal maps, see kit.plots.MapScale),
so a bright map means "far above what this run sees on normal images", and a normal image
stays dark. The image list can be filtered by defect type, sorted by a run's score and
narrowed to the mistakes (false positives / negatives at each run's image threshold).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from kit import plots
from kit.app import common
from kit.runstore import Run

SORTS = ("file name", "score: highest first", "score: lowest first")
MAX_VIEW = 256  # px at most of the test image on screen (runs store smaller maps: resized up)
RECON = "reconstruction kept"  # image_table's column: a chosen run stored this image's reconstruction


def view_size(run: Run) -> int:
    """Pixels of the test image on screen: the size the method saw, at most MAX_VIEW."""
    size = run.metrics.get("image_size")
    return min(int(size), MAX_VIEW) if isinstance(size, int) else int(run.maps.shape[-1])


def image_table(runs: list[Run]) -> pd.DataFrame:
    """One row per test image present in every run: name, defect type, label, whether a run
    kept its reconstruction (column ``RECON``, only where a run keeps any), and per run
    ``score · <run>`` and ``verdict · <run>`` (TP/FP/FN/TN at the run's threshold)."""
    first = {r["name"]: r for r in runs[0].scores}
    by_run = [{row["name"]: row for row in run.scores} for run in runs]
    shared = [n for n in first if all(n in rows for rows in by_run)]
    table = pd.DataFrame({"image": shared,
                          "defect type": [first[n]["defect_type"] for n in shared],
                          "label": [int(first[n]["label"]) for n in shared]})
    kept = [(run.reconstructions, rows) for run, rows in zip(runs, by_run) if run.reconstructions]
    if kept:  # reconstruction methods keep a sample of them (pipeline.RECONSTRUCTION_SAMPLE)
        table[RECON] = [any(int(rows[n]["index"]) in recon for recon, rows in kept) for n in shared]
    for run, rows in zip(runs, by_run):
        threshold = run.metrics.get("threshold")
        scores = [rows[n]["score"] for n in shared]
        table[f"score · {run.name}"] = scores
        table[f"verdict · {run.name}"] = [common.verdict(l, s, threshold)
                                          for l, s in zip(table["label"], scores)]
    return table


def defect_table(runs: list[Run], metric: str = "pixel_auroc") -> pd.DataFrame:
    """``metric`` of each run (rows) per defect type (columns), from metrics.json's
    ``by_defect``; runs made before the kit wrote it have no row."""
    rows = []
    for run in runs:
        by_defect = run.metrics.get("by_defect") or {}
        if by_defect:
            rows.append({"run": run.name, "all types": run.metrics.get(metric),
                         **{t: v.get(metric) for t, v in sorted(by_defect.items())}})
    return pd.DataFrame(rows)


def _mistakes(row: pd.Series, runs: list[Run]) -> list[str]:
    return [f"{row[f'verdict · {r.name}']} {r.name}" for r in runs
            if row[f"verdict · {r.name}"] in ("FP", "FN")]


def filtered_table(table: pd.DataFrame, runs: list[Run]) -> pd.DataFrame:
    """The filter / sort widgets applied to :func:`image_table`."""
    # two rows: in one, a 1280 px window cut the defect types ("brea…") and "Only mista…"
    top = st.columns([3, 1], vertical_alignment="bottom")
    types = sorted(table["defect type"].unique(), key=lambda t: (t != "good", t))
    common.keep_valid_many("cmp_types", types, default=types)
    chosen_types = top[0].multiselect("Defect types", types, key="cmp_types")
    only_mistakes = top[1].checkbox("Only mistakes", key="cmp_mistakes",
                                    help="false positives or false negatives of any chosen run")
    only_rebuilt = False
    if RECON in table and not table[RECON].all():  # a run keeps some reconstructions, not all
        only_rebuilt = top[1].checkbox(
            "Only reconstructed", key="cmp_rebuilt",
            help=f"the images whose reconstruction a chosen run kept: {int(table[RECON].sum())} "
                 f"of these {len(table)} (a run keeps a random sample of both labels)")
    cols = st.columns(2)
    sort = cols[0].selectbox("Order", SORTS, key="cmp_sort")
    common.keep_valid("cmp_sort_run", [r.name for r in runs])
    sort_run = cols[1].selectbox("Score of run", [r.name for r in runs], key="cmp_sort_run",
                                 disabled=sort == SORTS[0])
    out = table[table["defect type"].isin(chosen_types)]
    if only_mistakes:
        wrong = out[[f"verdict · {r.name}" for r in runs]].isin(["FP", "FN"]).any(axis=1)
        out = out[wrong]
    if only_rebuilt:
        out = out[out[RECON]]
    if sort != SORTS[0]:
        out = out.sort_values(f"score · {sort_run}", ascending=sort == SORTS[2], kind="stable")
    return out


def show_image(runs: list[Run], row: pd.Series, max_per_row: int = 4) -> None:
    """Side by side: the image, its ground truth, then per run its map above its overlay."""
    first = runs[0]
    rows = [{r["name"]: r for r in run.scores}[row["image"]] for run in runs]
    path = common.image_path(first, rows[0])
    mask_path, mask_problem = common.mask_for(first, rows[0])
    verdicts = [f"`{run.name}` {row[f'score · {run.name}']:.4g} → **{row[f'verdict · {run.name}']}**"
                + (" ⚠️" if row[f"verdict · {run.name}"] in ("FP", "FN") else "") for run in runs]
    st.markdown(f"**{row['image']}** · defect type **{row['defect type']}** · "
                f"{'defective' if row['label'] else 'normal'} · scores: " + " · ".join(verdicts))
    if mask_problem:
        st.warning(mask_problem)
    if path is None:
        st.warning(f"Test image not found: {rows[0]['path']} (nor under the run's data root "
                   f"{first.config.get('data_root')}). The data moved? Maps are shown alone.")
    per_row = min(len(runs), max_per_row)
    for start in range(0, len(runs), per_row):
        part = list(zip(runs, rows))[start:start + per_row]
        top, bottom = st.columns(2 + per_row), st.columns(2 + per_row)
        if start == 0 and path is not None:
            size = view_size(first)
            image = common.load_image(str(path), size)
            mask = common.load_mask(str(path), mask_path, size)
            # plain images (no plotly): the page draws faster and these need no colour scale
            top[0].markdown("**test image**")
            top[0].image(image, width="stretch")
            gt_title = "ground truth" if row["label"] else "ground truth: defect-free"
            if row["label"] and mask_path is None and not mask_problem:
                gt_title = "ground truth: no mask file"
            top[1].markdown(f"**{gt_title}**")
            top[1].image(plots.tint_mask(image, mask), width="stretch")
        if start == 0:
            bottom[0].caption("Each run keeps one colour scale for every image, set by its "
                              "held-out normal images (never by the image on screen). Cyan: "
                              "pixel threshold; dotted green: ground truth. TP/TN right, FP a "
                              "normal image flagged, FN a defect missed, at each run's image "
                              "threshold (99% of held-out normal scores).")
        for k, (run, srow) in enumerate(part):
            _run_panel(top[2 + k], bottom[2 + k], run, srow, row)


def pick_map(container, run: Run) -> str:
    """The map of ``run`` to show: ``"primary"``, or one of its named maps (a picker appears
    only for runs that have them, e.g. CLS-CNFs' A_p and A_nf beside the combined A)."""
    if not run.map_names:
        return "primary"
    options = ["primary", *run.map_names]
    key = f"cmp_mapname_{run.name}"
    common.keep_valid(key, options)
    return container.selectbox("Map", options, key=key,
                               format_func=lambda n: f"{n} ({common.map_metric_line(run, n)})",
                               help="primary: the method's own result; the others are further "
                                    "maps of the same model, each with its own colour scale "
                                    "and metrics (metrics.json: maps)")


def _run_panel(top, bottom, run: Run, srow: dict, row: pd.Series) -> None:
    """One run: its map (fixed scale, threshold contour) above its overlay, and its
    reconstruction where the run stored one for this image."""
    top.markdown(f"**{run.name}**")
    name = pick_map(top, run)
    scale = common.map_scale(run, name)
    amap = run.named_map(name)[int(srow["index"])].astype("float32")
    v = row[f"verdict · {run.name}"]
    if amap.max() == amap.min():  # e.g. an ablation variant that scores images only
        top.info(f"score {srow['score']:.4g} → {v}. No anomaly map: this run's map is constant "
                 f"({amap.flat[0]:.3g}), so it does not localise defects.")
        return
    title = f"score {srow['score']:.4g} → {v}" + ("" if name == "primary" else f" · map {name}")
    top.plotly_chart(plots.anomaly_map_figure(amap, scale, title=title),
                     key=f"cmp_map_{run.name}", config=common.PICTURE)
    path = common.image_path(run, srow)
    if path is not None:
        size = view_size(run)
        image = common.load_image(str(path), size)
        mask_path, _ = common.mask_for(run, srow)
        mask = common.load_mask(str(path), mask_path, size) if mask_path else None
        bottom.plotly_chart(plots.overlay_figure(image, plots.resize_map(amap, size), scale, mask,
                                                 title=f"{run.method} overlay"),
                            key=f"cmp_overlay_{run.name}", config=common.PICTURE)
    bottom.caption(f"`{run.name}`: " + scale.describe())
    recon = run.reconstructions
    if recon:
        index = int(srow["index"])
        if index in recon:
            bottom.markdown("**reconstruction**")
            bottom.image(recon[index].transpose(1, 2, 0), width="stretch")
        else:
            bottom.caption(f"Reconstruction: the run keeps {len(recon)} of its test images' "
                           "reconstructions, not this one's (\"Only reconstructed\" "
                           "lists those of every chosen run).")


def render() -> None:
    chosen = common.page_runs("Compare runs on one test image")
    if not chosen:
        return
    table = image_table(chosen)
    if table.empty:
        st.warning("The chosen runs share no test image (different datasets?).")
        return
    shown = filtered_table(table, chosen)
    if shown.empty:
        st.info("No test image matches these filters.")
        return
    image_viewer(chosen, shown, len(table))
    with st.expander("Metrics per defect type"):
        st.caption("Each defect type scored against every normal test image. A pooled pixel "
                   "metric ranks all defect pixels together, so the types with large masks "
                   "weigh most (on MTD, `uneven`).")
        for metric, label in (("pixel_auroc", "pixel AUROC"), ("image_auroc", "image AUROC")):
            per_type = defect_table(chosen, metric)
            if per_type.empty:
                st.caption("These runs predate per-defect metrics: refit them to see them.")
                break
            st.markdown(f"**{label}**")
            st.dataframe(per_type, hide_index=True, key=f"cmp_defects_{metric}")


@st.fragment
def image_viewer(runs: list[Run], shown: pd.DataFrame, total: int) -> None:
    """The image picker and what it shows. A fragment: picking another image reruns only
    this part of the page, which keeps switching images quick."""
    labels = {}
    for _, r in shown.iterrows():
        wrong = _mistakes(r, runs)
        labels[r["image"]] = r["image"] + ("  ⚠️ " + ", ".join(wrong) if wrong else "")
    # Labels name the chosen runs' mistakes, so a new choice of runs relabels the options and
    # the browser's old label matches none: fall back to the image on screen, not the first.
    common.keep_valid("cmp_image", list(labels), fallback=st.session_state.get("cmp_image_shown"))
    name = st.selectbox(f"Test image ({len(shown)} of {total})", list(labels),
                        format_func=labels.get, key="cmp_image")
    st.session_state["cmp_image_shown"] = name
    show_image(runs, shown[shown["image"] == name].iloc[0])
    with st.expander("Image list (scores and verdicts of every chosen run)"):
        st.dataframe(shown, hide_index=True, key="cmp_table")


if __name__ == "__main__":  # run as a page by st.navigation (not on import)
    render()
