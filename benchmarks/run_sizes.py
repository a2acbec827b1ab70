"""Disk size of each method's run on a dataset, file by file, against the 30 MB a laptop run
may take. Fits the runs it is not given (quick budget unless told), or measures existing ones.

    python benchmarks/run_sizes.py                              # every method on MTD, fits
    python benchmarks/run_sizes.py --runs runs/padim_mtd runs/differnet_mtd   # measure only
    python benchmarks/run_sizes.py --budget full --methods differnet

Also prints the run facts metrics.json records (peak memory, parameters, model MB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from kit.method import load_methods  # noqa: E402
from kit.paths import SHARED_DATA, default_data_root  # noqa: E402
from kit.pipeline import run_experiment  # noqa: E402
from kit.runstore import RUN_FILES, load_run  # noqa: E402

LIMIT_MB = 30.0
FACTS = ("fit_peak_rss_mb", "score_peak_rss_mb", "trainable_params", "total_params", "model_mb",
         "state_mb")


def report(run_dir: Path) -> float:
    run = load_run(run_dir)
    sizes = {f: (run_dir / f).stat().st_size / 1e6 for f in RUN_FILES}
    total = sum(sizes.values())
    verdict = "ok" if total <= LIMIT_MB else f"OVER {LIMIT_MB:.0f} MB"
    print(f"\n{run_dir} ({run.method}, {run.metrics.get('budget')} budget, "
          f"{run.metrics.get('n_test')} test images, maps: primary"
          + "".join(f", {n}" for n in run.map_names) + ")")
    for name, mb in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<16}{mb:9.2f} MB")
    print(f"  {'total':<16}{total:9.2f} MB  {verdict}")
    print("  " + "  ".join(f"{k}={run.metrics.get(k)}" for k in FACTS))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=None, help="measure these runs, fit nothing")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every method")
    parser.add_argument("--data-root", default=str(SHARED_DATA / "mtd"))
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--budget", choices=("quick", "full"), default="quick")
    parser.add_argument("--out", default=None, help="where fitted runs go (default: a temp dir)")
    args = parser.parse_args()
    if args.runs:
        runs = [Path(r) for r in args.runs]
    else:
        out = Path(args.out or tempfile.mkdtemp(prefix="run_sizes_"))
        root = default_data_root(args.data_root)
        runs = [run_experiment(m, root, args.category, out / f"{m}_{args.budget}", budget=args.budget,
                               overwrite=True)
                for m in (args.methods or sorted(load_methods()))]
    totals = [report(r) for r in runs]
    return 0 if all(t <= LIMIT_MB for t in totals) else 1


if __name__ == "__main__":
    sys.exit(main())
