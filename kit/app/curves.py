"""Curves page: ROC, PR and PRO curves, score histograms and the metrics table of chosen runs,
with the papers' numbers where the method declares them (``paper.results``, kit/papers/)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from kit import plots
from kit.app import common
from kit.runstore import Run

METRIC_COLUMNS = {  # metrics.json key -> column title
    "image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pixel_aupr": "pixel AUPR",
    "aupro": "AUPRO (FPR ≤ 0.3)", "f1_max": "F1-max", "f1": "F1 at threshold",
    "precision": "precision", "recall": "recall",
}
COST_COLUMNS = {"threshold": "threshold", "fit_seconds": "fit s",
                "infer_ms_per_image": "ms / image", "n_train": "train images", "n_test": "test images"}
# the share of test views whose features came from the feature cache: above
# kit.report.WARM_SHARE, "ms / image" is a warm time; empty for methods without a feature cache
CACHED = "test views from cache"


def metrics_table(runs: list[Run]) -> pd.DataFrame:
    """Our runs, then one row per (method, paper dataset) from the methods' ``paper.results``."""
    from kit.method import load_methods
    from kit.report import cached_view_share

    rows = []
    for run in runs:
        m = run.metrics
        rows.append({"source": "ours", "run": run.name, "method": run.method,
                     "backbone": m.get("backbone"), "size": m.get("image_size"),
                     "budget": m.get("budget"),
                     **{title: m.get(key) for key, title in {**METRIC_COLUMNS, **COST_COLUMNS}.items()},
                     CACHED: cached_view_share(m.get("inference_info"))})
    methods = load_methods()
    for name in sorted({r.method for r in runs}):
        cls = methods.get(name)
        for dataset, values in (cls.paper.results if cls is not None else {}).items():
            rows.append({"source": f"paper ({dataset})", "run": "", "method": name,
                         **{title: values.get(key) for key, title in METRIC_COLUMNS.items()}})
    return pd.DataFrame(rows)


def reference_table(records: list[dict]) -> pd.DataFrame:
    """The reference records' metrics, one row per method (mean over seeds)."""
    from kit.report import METRICS

    rows = []
    for record in records:
        rows.append({"source": "reference", "run": record["run"], "method": record["method"],
                     "backbone": record.get("backbone"), "size": record.get("image_size"),
                     "budget": record["budget"], "seed": record["seed"],
                     **{METRIC_COLUMNS[k]: record.get(k) for k in METRICS},
                     "fit s": record.get("fit_seconds"),
                     "ms / image": record.get("infer_ms_per_image"),
                     CACHED: record.get("cached_view_share")})
    return pd.DataFrame(rows)


def reference_groups(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The ``(data, category, budget)`` groups of reference ``records``, in the order the page
    offers them: real data before the embedded sample, then, for one dataset and category, the
    group with the most methods first (a full budget made for a few methods does not hide the
    table of every method), the full budget first among equals."""
    methods: dict[tuple[str, str, str], set[str]] = {}
    for r in records:
        methods.setdefault((r["data"], r["category"], r["budget"]), set()).add(r["method"])
    return sorted(methods, key=lambda g: (g[0] == "sample", g[0], g[1], -len(methods[g]),
                                          g[2] != "full", g[2]))


def show_reference(open_: bool) -> None:
    """The committed result data (``kit.report``): each method's default run, its metrics and
    curves, labelled with the command and date that made them."""
    from kit.report import default_records, reference_command, reference_records

    records = default_records(reference_records())
    if not records:
        return
    groups = reference_groups(records)
    with st.expander("Reference results (committed with the kit)", expanded=open_):
        key = "curves_reference_group"
        common.keep_valid(key, groups)
        group = st.selectbox("Reference runs on", groups, key=key,
                             format_func=lambda g: f"{g[1]} from {g[0]}, {g[2]} budget")
        chosen = [r for r in records if (r["data"], r["category"], r["budget"]) == group]
        dates = sorted(r["created"][:10] for r in chosen if r.get("created"))
        st.caption(f"Made {dates[0] if dates else '?'}"
                   + (f" to {dates[-1]}" if dates and dates[-1] != dates[0] else "")
                   + " by " + ", ".join(sorted({f"`{reference_command(r)}`" for r in chosen}))
                   + " (docs/results/runs.json; the full tables: docs/report.md). Your own runs "
                   "appear below as you make them.")
        st.dataframe(reference_table(chosen), hide_index=True, key="curves_reference_table",
                     column_config={t: st.column_config.NumberColumn(format="%.3f")
                                    for t in METRIC_COLUMNS.values()})
        curves = {f"{r['method']} s{r['seed']}": r.get("curves") or {} for r in chosen}
        cols = st.columns(2)
        for i, kind in enumerate(("image_roc", "image_pr", "pixel_roc", "pro")):
            cols[i % 2].plotly_chart(plots.curve_figure(curves, kind), key=f"ref_curve_{kind}")


def render() -> None:
    runs, _ = common.all_runs()
    if not runs:  # a learner sees the reference results before making any run
        st.title("Curves and metrics")
        show_reference(open_=True)
        common.first_start(common.runs_root())
        return
    chosen = common.page_runs("Curves and metrics")
    if not chosen:
        show_reference(open_=False)
        return

    st.subheader("Metrics")
    table = metrics_table(chosen)
    st.dataframe(table, hide_index=True, key="curves_table",
                 column_config={t: st.column_config.NumberColumn(format="%.3f")
                                for t in METRIC_COLUMNS.values()})
    if not (table["source"] != "ours").any():
        st.caption("No paper numbers: the chosen methods' papers declare no `results`.")
    st.caption("Paper rows use the paper's backbone, resolution and protocol: a guide, not a "
               "target. AUPRO is integrated to FPR 0.3 and divided by 0.3 (MVTec AD definition); "
               "thresholded numbers use the 99% quantile of held-out normal image scores.")

    curves = {r.name: r.curves for r in chosen}
    cols = st.columns(2)
    for i, kind in enumerate(("image_roc", "image_pr", "pixel_roc", "pro")):
        cols[i % 2].plotly_chart(plots.curve_figure(curves, kind), key=f"curve_{kind}")

    st.subheader("Image scores: normal vs defective test images")
    per_row = min(len(chosen), 3)
    for start in range(0, len(chosen), per_row):
        hist_cols = st.columns(per_row)
        for col, run in zip(hist_cols, chosen[start:start + per_row]):
            scores = [row["score"] for row in run.scores]
            labels = [row["label"] for row in run.scores]
            col.plotly_chart(plots.score_histogram(scores, labels, run.metrics.get("threshold"),
                                                   title=run.name), key=f"hist_{run.name}")
    st.caption("Dashed line: the run's image threshold (99% quantile of held-out normal scores). "
               "Scores of different methods live on different scales; compare shapes and overlap.")
    show_reference(open_=False)  # after the user's own runs, closed


if __name__ == "__main__":  # run as a page by st.navigation (not on import)
    render()
