"""Every method's inference against its bare backbone forward, in one process: the result
data of the report's speed table (``docs/results/speed.json``).

For each registered method, the fitted model of its default run in the grid (``python -m kit
bench``: the newest default-settings run of ``--budget`` under ``--runs-root``) is restored on
the CPU; one test image of that run's data, at the run's size, batch 1, ``--threads`` threads:
the median ms of ``method.predict`` (every map the method returns) and of the bare backbone
(``FeatureExtractor`` of the run's backbone through the stages the method reads; all five for a
method without a ``layers`` setting), timed interleaved, and their ratio (issue 13's target:
at most 1.5x).

    .venv/bin/python benchmarks/bench_methods.py [--budget quick] [--repeats 10] [--methods ...]
    .venv/bin/python -m kit report --no-collect     # the report's speed table from the file

Run it on a quiet machine; it records the load average before and after each method.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere in the repo
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_cflow import interleaved  # noqa: E402

from kit.backbones import FeatureExtractor  # noqa: E402
from kit.data import ImageSet, find_category  # noqa: E402
from kit.method import load_methods  # noqa: E402
from kit.paths import default_runs_root  # noqa: E402
from kit.pipeline import restore_method  # noqa: E402
from kit.report import SPEED_FILE, collect, newest_defaults  # noqa: E402

ALL_STAGES = (0, 1, 2, 3, 4)


def default_runs(runs_root: Path, budget: str) -> dict[str, dict]:
    """``{method: record}``: the newest default-settings run of ``budget`` per method."""
    records = [r for r in collect(runs_root) if r["budget"] == budget and r["data"] != "sample"]
    return newest_defaults(records, key=lambda r: r["method"])


def bare_forward(backbone: str, layers, weights: str):
    """``fn(images [B, 3, S, S] in [0, 1])``: the bare forward of ``backbone`` through the
    deepest of ``layers``, channels-last as every method runs it, so a ratio to it is the
    method's own cost."""
    bare = FeatureExtractor(backbone, layers=(max(layers),), weights=weights,
                            channels_last=True).eval()

    def forward(x):
        with torch.inference_mode():
            bare(x)

    return forward


def measure(run_dir: Path, repeats: int) -> dict:
    method = restore_method(run_dir, device="cpu")
    cfg = method.config
    run_config = json.loads((run_dir / "config.json").read_text())
    cat = find_category(run_config["data_root"], run_config["category"])
    image = ImageSet(cat.test[:1], cfg.image_size).tensor().float() / 255.0
    layers = tuple(getattr(cfg, "layers", None) or ALL_STAGES)
    backbone = bare_forward(cfg.backbone, layers, cfg.weights)
    load_before = os.getloadavg()[0]
    wall = interleaved({"backbone": backbone, "method": method.predict}, image, repeats)
    med = {k: statistics.median(v) for k, v in wall.items()}
    return {"backbone": cfg.backbone, "image_size": cfg.image_size, "deepest_stage": max(layers),
            "bare_ms": round(med["backbone"], 2), "method_ms": round(med["method"], 2),
            "ratio": round(med["method"] / med["backbone"], 3),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-root", default=None)
    parser.add_argument("--budget", choices=("quick", "full"), default="quick")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--out", default=str(SPEED_FILE))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    runs = default_runs(default_runs_root(args.runs_root), args.budget)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else []
    rows = []
    for name in args.methods or sorted(load_methods()):
        if name not in runs:
            print(f"{name}: no default {args.budget} run under the runs root; make it with "
                  f"python -m kit bench --methods {name} --budget {args.budget}")
            continue
        row = {"method": name, "budget": args.budget, "run": runs[name]["run"],
               **measure(default_runs_root(args.runs_root) / runs[name]["run"], args.repeats),
               "threads": torch.get_num_threads(), "batch": 1, "repeats": args.repeats,
               "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        print(f"{name:<10} {row['backbone']:<24} {row['image_size']:>4} px  bare {row['bare_ms']:8.1f} ms"
              f"  method {row['method_ms']:8.1f} ms  x{row['ratio']:.2f}  (load {row['load_before']:.2f}"
              f" -> {row['load_after']:.2f})")
        rows.append(row)
    measured = {(r["budget"], r["method"]) for r in rows}  # other methods' rows are kept
    kept = [r for r in previous if (r.get("budget"), r.get("method")) not in measured]
    out.write_text(json.dumps(sorted(kept + rows, key=lambda r: (r["budget"], r["method"])),
                              indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
