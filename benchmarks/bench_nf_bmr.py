"""NF-BMR's, B-PFM's and MB-PFM's inference against the bare source backbone, in one process.

At each method's full-budget input size (384 px; ``--size`` for another), batch 1, 2 CPU
threads: the median ms of the bare source ``FeatureExtractor`` (Lite2 to the stride-32
stage, as NF-BMR runs it) and of each method's ``predict``, timed interleaved, and their
ratios (issue 11's target: NF-BMR at most 1.5x the backbone).

Timing needs no training: a forward pass costs the same whatever the weights learned, so the
methods' learned parts keep their initial values (their checkpoint is loaded back once).

    .venv/bin/python benchmarks/bench_nf_bmr.py [--repeats 20] [--threads 2] [--size 384]

Run it on a quiet machine; it prints the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere in the repo
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_cflow import interleaved  # noqa: E402

from kit.data import ImageSet, find_category  # noqa: E402
from kit.method import make_method  # noqa: E402
from kit.paths import DEFAULT_CATEGORY, SAMPLE_ROOT  # noqa: E402

METHODS = ("nf_bmr", "bpfm", "mbpfm")


def ready(name: str, size: int | None):
    """The method at its full budget, its learned parts at their initial values."""
    method = make_method(name, "full", device="cpu", **({"image_size": size} if size else {}))
    method.load_state_dict(method.state_dict())
    return method


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(SAMPLE_ROOT))
    parser.add_argument("--category", default=DEFAULT_CATEGORY)
    parser.add_argument("--size", type=int, default=None, help="input size (default: the full budget's)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    methods = {name: ready(name, args.size) for name in args.methods}
    first = next(iter(methods.values()))
    size = first.config.image_size
    cat = find_category(args.data_root, args.category)
    one = ImageSet(cat.test[:1], size).tensor().float() / 255.0

    def backbone(x):
        with torch.inference_mode():
            first.source(x)

    fns = {"backbone": backbone, **{name: m.predict for name, m in methods.items()}}
    wall = interleaved(fns, one, args.repeats)
    med = {k: statistics.median(v) for k, v in wall.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, {size}x{size}, "
          f"source {first.config.backbone} layers {first.config.layers}, {args.repeats} repeats, "
          f"load {load_before[0]:.2f} before")
    print(f"  {'bare source backbone':<24}{med['backbone']:8.1f} ms")
    for name in methods:
        print(f"  {name + ' predict':<24}{med[name]:8.1f} ms   x{med[name] / med['backbone']:.2f} the backbone")
    print(f"load {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
