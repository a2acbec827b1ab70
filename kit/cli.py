"""Command-line interface: ``python -m kit fit | eval | list | ablation | bench | report | info``.

    python -m kit fit --method padim --category magnetic_tile --out runs/padim_mtd
    python -m kit eval runs/padim_mtd
    python -m kit list runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kit.paths import DEFAULT_CATEGORY, default_data_root, default_runs_root


def _positive(text: str) -> int:
    """An integer of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _parse_override(text: str) -> tuple[str, object]:
    """``--set`` / ``--tag`` values: ``key=value`` as :func:`kit.method.parse_setting` reads it."""
    from kit.method import ConfigError, parse_setting

    try:
        return parse_setting(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train on train/good, score the test split, write a run")
    fit.add_argument("--method", required=True, help="padim, differnet, ... (see `info`)")
    fit.add_argument("--data-root", default=None,
                     help="folder holding category folders (default: $KIT_DATA_ROOT, "
                          "../shared/data/mtd, else the embedded sample)")
    fit.add_argument("--category", default=DEFAULT_CATEGORY)
    fit.add_argument("--out", default=None, help="run folder (default: runs/<method>_<category>_<budget>_s<seed>)")
    fit.add_argument("--backbone", default=None, help="timm model name, e.g. tf_efficientnet_lite0")
    fit.add_argument("--weights", default=None, help="auto | offline | hub | none | path | URL")
    fit.add_argument("--image-size", type=int, default=None)
    fit.add_argument("--device", default=None,
                     help="auto (default: CUDA when torch sees a GPU, else CPU) | cpu | cuda | cuda:N")
    fit.add_argument("--budget", choices=("quick", "full"), default="quick")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--set", dest="overrides", action="append", type=_parse_override, default=[],
                     metavar="KEY=VALUE", help="override any config field (repeatable)")
    fit.add_argument("--tag", dest="tags", action="append", type=_parse_override, default=[],
                     metavar="KEY=VALUE", help="label the run (e.g. ablation=table3 variant=A)")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    fit.add_argument("--quiet", action="store_true", help="no progress bars")

    ev = sub.add_parser("eval", help="re-score a run's test split from its checkpoint")
    ev.add_argument("run_dir")
    ev.add_argument("--data-root", default=None, help="where the data lives now, if it moved")
    ev.add_argument("--quiet", action="store_true")

    ox = sub.add_parser("onnx", help="export a run's fitted model to <run>/model.onnx for ONNX "
                                     "Runtime, check it against PyTorch and time both")
    ox.add_argument("run_dir")
    ox.add_argument("--check", type=_positive, default=8, metavar="N",
                    help="test images scored by both to compare and time (default 8)")
    ox.add_argument("--batch", type=_positive, default=1,
                    help="images per call of the graph (default 1; larger batches are cut or padded)")
    ox.add_argument("--threads", type=_positive, default=2)
    ox.add_argument("--data-root", default=None, help="where the run's data lives now, if it moved")
    ox.add_argument("--quiet", action="store_true")

    ls = sub.add_parser("list", help="list the runs under a folder with their metrics")
    ls.add_argument("runs_root", nargs="?", default=None)

    ab = sub.add_parser("ablation", help="run a paper's ablation: one tagged run per variant")
    ab.add_argument("method")
    ab.add_argument("name", help="ablation name (see `info`)")
    ab.add_argument("--data-root", default=None)
    ab.add_argument("--category", default=DEFAULT_CATEGORY)
    ab.add_argument("--runs-root", default=None)
    ab.add_argument("--budget", choices=("quick", "full"), default="quick")
    ab.add_argument("--seeds", type=int, nargs="+", default=[0])
    ab.add_argument("--variants", nargs="*", default=None, help="only these variant labels")
    ab.add_argument("--quiet", action="store_true")

    bench = sub.add_parser("bench", help="the grid: methods x categories x ablation variants x "
                                          "seeds, on Dask (a local cluster or --scheduler)")
    bench.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    bench.add_argument("--categories", nargs="+", default=[DEFAULT_CATEGORY])
    bench.add_argument("--data-root", default=None)
    bench.add_argument("--runs-root", default=None)
    bench.add_argument("--budget", choices=("quick", "full"), default="quick")
    bench.add_argument("--seeds", type=int, nargs="+", default=[0])
    bench.add_argument("--no-ablations", action="store_true",
                       help="each method's default run only, not its papers' ablation variants")
    bench.add_argument("--scheduler", default=None,
                       help="a Dask scheduler address (tcp://host:8786); default: a local cluster")
    bench.add_argument("--workers", type=int, default=1,
                       help="local cluster: worker processes, one run each (default 1: on 2 "
                            "cores, two runs at once are slower than one after the other)")
    bench.add_argument("--threads", type=int, default=None,
                       help="torch threads per run (default: cores / workers)")
    bench.add_argument("--dry-run", action="store_true", help="list the runs, make none")
    bench.add_argument("--report", action="store_true",
                       help="then collect the runs into the result data and write the report")
    bench.add_argument("--quiet", action="store_true")

    rep = sub.add_parser("report", help="collect runs into docs/results/runs.json and write "
                                        "docs/report.md, its plots and the README's table")
    rep.add_argument("--runs-root", default=None)
    rep.add_argument("--no-collect", action="store_true",
                     help="only re-render from the committed result data")
    rep.add_argument("--all-runs", action="store_true",
                     help="also runs without an ablation tag (hand-made `kit fit` runs)")

    sub.add_parser("info", help="methods, their papers, budgets and why, ablations, offline backbones")

    demo = sub.add_parser("demo", help="quick runs of every method on the embedded sample")
    demo.add_argument("--runs-root", default=None)
    demo.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    return parser


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def cmd_fit(args) -> int:
    from kit.data import check_category_name
    from kit.pipeline import run_experiment
    from kit.report import warm_suffix

    overrides = dict(args.overrides)
    for key in ("backbone", "weights", "image_size", "device"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    data_root = default_data_root(args.data_root)
    check_category_name(data_root, args.category)  # it names the default run folder too
    out = Path(args.out) if args.out else (
        default_runs_root() / f"{args.method}_{args.category}_{args.budget}_s{args.seed}")
    print(f"fitting {args.method} on {data_root / args.category} ({args.budget} budget, seed {args.seed})")
    run_dir = run_experiment(args.method, data_root, args.category, out, budget=args.budget,
                             seed=args.seed, overrides=overrides, tags=dict(args.tags),
                             progress=not args.quiet,
                             overwrite=args.overwrite)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keys = ("image_auroc", "pixel_auroc", "pixel_aupr", "aupro", "f1_max", "fit_seconds", "infer_ms_per_image")
    print("  ".join(f"{k}={_fmt(metrics.get(k))}" for k in keys) + warm_suffix(metrics))
    for name, values in (metrics.get("maps") or {}).items():  # the method's further maps
        print(f"  map {name}: " + "  ".join(f"{k}={_fmt(values.get(k))}" for k in keys[:5]))
    by_defect = metrics.get("by_defect") or {}
    for key in ("pixel_auroc", "image_auroc"):  # which defects the method finds (each vs normal)
        if any(v.get(key) is not None for v in by_defect.values()):
            print(f"  {key} per defect type: "
                  + "  ".join(f"{t}={_fmt(v.get(key))}" for t, v in sorted(by_defect.items())))
    facts = ("device", "fit_peak_rss_mb", "score_peak_rss_mb", "trainable_params", "total_params",
             "model_mb")
    print("  ".join(f"{k}={_fmt(metrics.get(k))}" for k in facts))
    print(f"run written to {run_dir}")
    return 0


def cmd_eval(args) -> int:
    from kit.pipeline import rescore_run
    from kit.runstore import load_run

    run = load_run(args.run_dir)
    fresh = rescore_run(args.run_dir, args.data_root, progress=not args.quiet)
    worst = 0.0
    print(f"{'metric':<22}{'stored':>10}{'re-scored':>11}")
    for key in ("image_auroc", "pixel_auroc", "pixel_aupr", "aupro", "pixel_auroc_per_image",
                "f1_max", "precision", "recall", "f1"):
        a, b = run.metrics.get(key), fresh.get(key)
        print(f"{key:<22}{_fmt(a):>10}{_fmt(b):>11}")
        if isinstance(a, float) and isinstance(b, float):
            worst = max(worst, abs(a - b))
    print(f"largest difference: {worst:.2e}")
    return 0


def cmd_onnx(args) -> int:
    from kit.deploy import DeployError, export_run
    from kit.runstore import load_run

    load_run(args.run_dir)  # a clear error for a folder that is not a complete run
    try:
        check = export_run(args.run_dir, n_check=args.check, batch=args.batch,
                           threads=args.threads, data_root=args.data_root,
                           progress=not args.quiet)
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    run = Path(args.run_dir)
    print(f"wrote {run / check['model']} ({check['method']}, {check['image_size']} px, batch "
          f"{check['batch']}, {check['export_s']:.1f} s to export)")
    print(f"checked on {check['images']} test images: largest difference to PyTorch "
          f"{check['max_rel_diff']:.1e} of each output's range; {check['threads']} threads: "
          f"PyTorch {check['eager_ms_per_image']:.1f} ms, ONNX Runtime "
          f"{check['onnx_ms_per_image']:.1f} ms per image")
    print(f"score with: kit.deploy.OnnxPredictor('{run / check['model']}').predict(images)")
    return 0


def cmd_list(args) -> int:
    from kit.runstore import list_runs

    root = default_runs_root(args.runs_root)
    runs, broken = list_runs(root)
    if not runs and not broken:
        print(f"no runs under {root}. Make one with: python -m kit fit --method padim")
        return 0
    header = f"{'run':<40}{'method':<11}{'backbone':<24}{'budget':<7}{'img AUROC':>10}{'pix AUROC':>10}{'AUPRO':>8}{'fit s':>8}"
    print(header)
    for r in runs:
        m = r.metrics
        print(f"{r.name:<40}{m['method']:<11}{m['backbone']:<24}{m['budget']:<7}"
              f"{_fmt(m['image_auroc']):>10}{_fmt(m['pixel_auroc']):>10}{_fmt(m['aupro']):>8}{_fmt(m['fit_seconds']):>8}")
    for message in broken:
        print(f"broken: {message}")
    return 0


def cmd_ablation(args) -> int:
    from kit.experiments import ablation_table, find_ablation, run_ablation

    ablation = find_ablation(args.method, args.name)
    root = default_runs_root(args.runs_root)
    failed = []  # one variant's failure (memory, a bad setting) does not stop the others

    def on_failure(label: str, path: Path, error: Exception) -> None:
        failed.append(f"failed: {label}: {path}: {type(error).__name__}: {error}")
        print(failed[-1], file=sys.stderr)

    run_ablation(args.method, args.name, default_data_root(args.data_root), args.category, root,
                 budget=args.budget, seeds=tuple(args.seeds), variants=args.variants,
                 progress=not args.quiet,
                 on_run=lambda label, path: print(f"{label}: {path}"), on_failure=on_failure)
    print(f"\n{ablation.title} ({ablation.metric}; paper values: {ablation.paper_dataset})")
    print(f"{'variant':<16}{'paper':>8}{'ours':>8}{'spread':>8}{'runs':>6}")
    for row in ablation_table(root, args.method, args.name, data_root=default_data_root(args.data_root),
                              category=args.category, budget=args.budget):
        print(f"{row['variant']:<16}{_fmt(row['paper']):>8}{_fmt(row['ours']):>8}"
              f"{_fmt(row['spread']):>8}{row['runs']:>6}")
    for line in failed:  # again below the table, where a long run's output ends
        print(line, file=sys.stderr)
    return 1 if failed else 0


def cmd_bench(args) -> int:
    from kit.grid import (append_grid_log, feature_cache_is_empty, grid_record, plan_grid,
                          run_grid)

    root = default_runs_root(args.runs_root)
    data_root = default_data_root(args.data_root)
    jobs = plan_grid(root, data_root, args.categories, args.methods, args.budget,
                     tuple(args.seeds), ablations=not args.no_ablations)
    if args.dry_run:
        for job in jobs:
            state = "complete" if job.is_complete() else "to make"
            print(f"{state:<9} {job.label}: {job.run_dir}")
        return 0
    cache_was_empty = feature_cache_is_empty()
    result = run_grid(jobs, scheduler=args.scheduler, workers=args.workers, threads=args.threads,
                      progress=not args.quiet)
    print(f"grid: {len(result.made)} made, {len(result.skipped)} already complete, "
          f"{len(result.failed)} failed, {result.seconds:.0f} s")
    if result.made:  # its cost, as data for `kit report` (docs/results/grid.json)
        record = grid_record(jobs, result, ablations=not args.no_ablations, workers=args.workers,
                             scheduler=args.scheduler, cache_was_empty=cache_was_empty)
        print(f"  logged in {append_grid_log(root, record)}")
    for run_dir, error in result.failed:
        print(f"failed: {run_dir}: {error}", file=sys.stderr)
    if args.report:
        cmd_report(argparse.Namespace(runs_root=str(root), no_collect=False, all_runs=False))
    return 1 if result.failed else 0


def cmd_report(args) -> int:
    from kit.report import write_report

    root = None if args.no_collect else default_runs_root(args.runs_root)
    done = write_report(root, tagged_only=not args.all_runs)
    source = f"{done['new']} collected from {root}" if root else "re-rendered, nothing collected"
    print(f"result data: {done['records']} runs ({source})")
    for message in done.get("skipped", []):
        print(f"skipped: {message}", file=sys.stderr)
    for path in done["files"]:
        print(f"  wrote {path}")
    return 0


def cmd_info(args) -> int:
    import textwrap

    from kit.method import load_methods
    from kit.weights import OFFLINE_WEIGHTS

    def show(text: str) -> None:  # under the method's name, continuation lines indented
        print(textwrap.fill(text, 100, initial_indent=" " * 12, subsequent_indent=" " * 14))

    for name, cls in sorted(load_methods().items()):
        paper = cls.paper  # kit/papers/<name>.py
        print(f"{name:<12}{paper.title}  budgets: {', '.join(cls.config_cls.BUDGETS)}")
        if paper.citation:
            show(f"paper: {paper.citation}")
        for budget in cls.config_cls.BUDGETS:
            if paper.budget_notes.get(budget):
                show(f"budget '{budget}': {paper.budget_notes[budget]}")
        for ablation in paper.ablations:
            labels = ", ".join(v.label for v in ablation.variants)
            show(f"ablation '{ablation.name}': {ablation.title} [{labels}]")
    print("offline backbones:", ", ".join(OFFLINE_WEIGHTS))
    print("data root:", default_data_root())
    return 0


def cmd_demo(args) -> int:
    from kit.method import load_methods
    from kit.paths import DEFAULT_CATEGORY, SAMPLE_ROOT
    from kit.pipeline import run_experiment
    from kit.runstore import RunError, load_run

    root = default_runs_root(args.runs_root)
    for name in args.methods or sorted(load_methods()):
        out = root / f"demo_{name}"
        try:
            load_run(out)
            print(f"{name}: demo run exists at {out}")
            continue
        except RunError:
            pass
        print(f"{name}: quick run on the embedded sample {SAMPLE_ROOT / DEFAULT_CATEGORY}")
        run_experiment(name, SAMPLE_ROOT, DEFAULT_CATEGORY, out, budget="quick", overwrite=True)
    print()
    cmd_list(argparse.Namespace(runs_root=str(root)))
    print("\ndashboard ready: .venv/bin/streamlit run app.py   (or: make app)")
    return 0


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """``warning: <message>``: the kit's warnings are about the user's data, not its code."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    from kit.weights import BackboneError
    from kit.data import DataError
    from kit.runstore import RunError

    args = build_parser().parse_args(argv)
    commands = {"fit": cmd_fit, "eval": cmd_eval, "onnx": cmd_onnx, "list": cmd_list, "info": cmd_info,
                "demo": cmd_demo, "ablation": cmd_ablation,
                "bench": cmd_bench, "report": cmd_report}
    default_format, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return commands[args.command](args)
    except (DataError, RunError, BackboneError, ValueError) as err:  # bad input: one clear line
        if os.environ.get("KIT_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the run in progress was not written"
              + (" (the grid's finished runs are kept; the same command resumes)"
                 if args.command == "bench" else ""), file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = default_format  # main() may be called in-process (tests)
