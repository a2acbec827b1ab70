"""Ablations page: each registered method's ablation tables (``AnomalyMethod.paper.ablations``,
kit/papers/) as charts, our runs next to the paper's values, and the command that makes each
missing run.

A run belongs to a variant when its config.json has ``tags == {"ablation": <name>,
"variant": <label>, ...}`` and its method matches (``run_experiment(..., tags=...)``).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from kit import plots
from kit.app import common
from kit.experiments import ablation_runs, variant_groups, variant_tags
from kit.method import load_methods
from kit.papers import Ablation, AblationVariant
from kit.paths import DEFAULT_CATEGORY, REPO_ROOT, python_command
from kit.report import (METRIC_NAMES, data_label, mean_known, paper_curve_points,
                        reference_ablation, reference_records)
from kit.runstore import Run


def runs_of(runs: list[Run], method: str, ablation: str, variant: str) -> list[Run]:
    """Runs of ``method`` tagged with this ablation that serve this variant."""
    return ablation_runs(runs, method, ablation).get(variant, [])


def group_of(run: Run) -> tuple[str, str, str, str]:
    """``(data root, category, dataset fingerprint, budget)``: the runs whose numbers may be
    averaged together. Runs made before runs recorded a fingerprint have ``""`` there."""
    from kit.pipeline import run_fingerprint

    return (str(run.config.get("data_root", "?")), str(run.config.get("category", "?")),
            run_fingerprint(run) or "", str(run.config.get("budget", "?")))


def group_label(group: tuple[str, str, str, str]) -> str:
    root, category, fingerprint, budget = group
    data = f"data {fingerprint[:8]}" if fingerprint else "data not fingerprinted"
    return f"{category} in {common.data_label(root)} · {budget} budget · {data}"


def _fit_options() -> set[str]:
    """Option strings of ``python -m kit fit`` and the names of all subcommands."""
    import argparse

    from kit.cli import build_parser

    for action in build_parser()._actions:  # argparse keeps subcommands here; no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices["fit"]._option_string_actions) | set(action.choices)
    return set()


def _value(v) -> str:
    """A setting as the CLI's ``--set`` parses it back (JSON, except plain strings)."""
    return v if isinstance(v, str) else json.dumps(list(v) if isinstance(v, tuple) else v)


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _run_name(method: str, ablation: str, variant: str) -> str:
    """The folder name ``python -m kit ablation`` gives a variant (quick budget, seed 0)."""
    try:
        from kit.experiments import run_name
    except ImportError:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{method}-{ablation}-{variant}-quick-s0").strip("-")
    return run_name(method, ablation, variant, "quick", 0)


def commands(method: str, ablation: Ablation, missing: list[AblationVariant], category: str,
             runs_root: Path) -> str:
    """Shell commands that make the missing runs, tagged so this page finds them: one
    ``python -m kit ablation`` line for all of them, then one ``fit`` line per variant; run from
    the project folder with the project's Python (:func:`kit.paths.python_command`)."""
    options = _fit_options()
    python = python_command()
    root = _shown_path(runs_root)
    lines = []
    if "ablation" in options:
        labels = " ".join(shlex.quote(v.label) for v in missing)
        lines += ["# all missing variants at once (quick budget; add --seeds 0 1 2 for spreads):",
                  f"{python} -m kit ablation {method} {ablation.name} --category {shlex.quote(category)} "
                  f"--runs-root {shlex.quote(root)} --variants {labels}", "", "# or one at a time:"]
    for source in sorted({v.source for v in missing if v.source is not None}):
        lines.append(f"# {', '.join(v.label for v in missing if v.source == source)}: maps of "
                     f"{source[0]}'s run for {source[1]}, made by its command")
        lines.append(f"{python} -m kit ablation {method} {source[0]} --category "
                     f"{shlex.quote(category)} --runs-root {shlex.quote(root)} --variants "
                     f"{shlex.quote(source[1])}")
    for group in variant_groups([v for v in missing if v.source is None]):  # maps of one model share its run
        v = group[0]
        sets = [f"--set {shlex.quote(f'{k}={_value(x)}')}" for k, x in v.overrides.items()]
        tags = variant_tags(ablation.name, group)
        tags = {k: json.dumps(t) if isinstance(t, list) else t for k, t in tags.items()}
        out = shlex.quote(str(Path(root) / _run_name(method, ablation.name, v.label)))
        if "--tag" in options:
            lines.append(" ".join([f"{python} -m kit fit --method {method}",
                                   f"--category {shlex.quote(category)}", *sets,
                                   *[f"--tag {shlex.quote(f'{k}={t}')}" for k, t in tags.items()],
                                   f"--out {out}"]))
        else:  # an older CLI without --tag: the Python call does the same
            code = (f"from kit.pipeline import run_experiment; from kit.paths import default_data_root; "
                    f"run_experiment({method!r}, default_data_root(), {category!r}, {out!r}, "
                    f"overrides={v.overrides!r}, tags={tags!r})")
            lines.append(f"{python} -c {shlex.quote(code)}")
    return "\n".join(lines)


def curve_paper_points(ablation: Ablation, tagged: dict[str, list[Run]],
                       reference: dict | None) -> list[tuple[float, float]]:
    """The paper's points of a curve ablation, at the training-set sizes of our runs and the
    reference's (:func:`kit.report.paper_curve_points`)."""
    sizes = {v.label: [r.metrics.get("n_train") for r in tagged.get(v.label, [])]
             + [x for x, _ in (reference or {}).get("points", {}).get(v.label, [])]
             for v in ablation.variants}
    return paper_curve_points({v.label: v.paper_value for v in ablation.variants}, sizes)


def show_ablation(method: str, title: str, ablation: Ablation, runs: list[Run]) -> None:
    st.subheader(f"{title}: {ablation.title}")
    st.caption(f"metric: `{ablation.metric}` · paper values: {ablation.paper_dataset}"
               + (f" · {ablation.note}" if ablation.note else ""))
    tagged = {v.label: runs_of(runs, method, ablation.name, v.label) for v in ablation.variants}
    # one dataset and budget at a time: a mean over sample and full-data runs is neither's result
    groups = sorted({group_of(r) for rs in tagged.values() for r in rs})
    category = budget = data = None
    if groups:
        group = groups[0]
        if len(groups) > 1:
            key = f"abl_group_{method}_{ablation.name}"
            common.keep_valid(key, groups)
            group = st.selectbox("Our runs on", groups, key=key, format_func=group_label)
        category, budget, data = group[1], group[3], data_label(group[0])
        tagged = {k: [r for r in rs if group_of(r) == group] for k, rs in tagged.items()}
    values = {v.label: [v.value(r.metrics, ablation.metric) for r in tagged[v.label]]
              for v in ablation.variants}
    ours = {k: [x for x in vs if x is not None] for k, vs in values.items()}
    paper = {v.label: v.paper_value for v in ablation.variants}
    labels = [v.label for v in ablation.variants]
    # the committed result data (docs/results/runs.json), so a learner sees numbers at once
    reference = reference_ablation(reference_records(), method, ablation, category, budget, data)
    if reference:
        st.caption(reference["caption"] + " Your own runs appear beside them.")
    title = f"{ablation.title} ({ablation.metric})"
    if ablation.plot == "curve":
        points = {"ours": [(r.metrics.get("n_train"), v.value(r.metrics, ablation.metric))
                           for v in ablation.variants for r in tagged[v.label]]}
        if reference:
            points["reference"] = [p for v in ablation.variants for p in reference["points"][v.label]]
        points = {k: [(x, y) for x, y in pts if x is not None and y is not None]
                  for k, pts in points.items()}
        paper_points = curve_paper_points(ablation, tagged, reference)
        figure = plots.ablation_curve_figure(points, paper_points, ablation.metric, title=title)
    else:
        figure = plots.ablation_figure(labels, ours, paper, ablation.metric, title=title,
                                       reference=reference["values"] if reference else None)
    st.plotly_chart(figure, key=f"abl_fig_{method}_{ablation.name}")
    table = pd.DataFrame([{
        "variant": v.label,
        "settings": ", ".join(f"{k}={_value(x)}" for k, x in v.overrides.items()) or "(defaults)",
        "map": v.map or "primary",
        "paper": v.paper_value,
        "ours (mean)": float(np.mean(ours[v.label])) if ours[v.label] else None,
        "spread": float(np.ptp(ours[v.label])) if len(ours[v.label]) > 1 else None,
        # the further metrics the paper's table shows (NF-BMR's F1) or that read it better
        # (NDP-Net's per-image pixel AUROC): our mean, runs without the value left out
        **{f"ours, {METRIC_NAMES.get(m, m)}": mean_known(v.value(r.metrics, m) for r in tagged[v.label])
           for m in ablation.extra_metrics},
        "runs": ", ".join(r.name for r in tagged[v.label]) or "missing",
        **({"reference (mean)": float(np.mean(reference["values"][v.label]))
            if reference["values"].get(v.label) else None} if reference else {}),
    } for v in ablation.variants])
    st.dataframe(table, hide_index=True, key=f"abl_table_{method}_{ablation.name}",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("paper", "ours (mean)", "spread", "reference (mean)",
                                          *(f"ours, {METRIC_NAMES.get(m, m)}"
                                            for m in ablation.extra_metrics))})
    missing = [v for v in ablation.variants if not tagged[v.label]]
    if missing:
        cat = category or st.session_state.get("pick_category") or DEFAULT_CATEGORY
        st.markdown(f"**Missing runs ({len(missing)} of {len(ablation.variants)})**, make them with:")
        st.code(commands(method, ablation, missing, cat, common.runs_root()), language="bash")
    else:
        st.success("Every variant has at least one run.")


def render() -> None:
    st.title("Ablations: the papers' tables next to our runs")
    runs, _ = common.all_runs()
    found = False
    for name, cls in sorted(load_methods().items()):
        for ablation in cls.paper.ablations:
            found = True
            show_ablation(name, cls.paper.title or name, ablation, runs)
    if not found:
        st.info("No registered method declares an ablation yet (PaDiM has none). Methods list "
                "theirs in their paper's `ablations` (kit/papers/<method>.py: Paper, Ablation, "
                "AblationVariant); they appear here with no change to the app.")


if __name__ == "__main__":  # run as a page by st.navigation (not on import)
    render()
