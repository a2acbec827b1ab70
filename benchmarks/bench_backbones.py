"""Throughput of the offline backbones against their FLOP count, and what channels-last, the
thread count and the batch size do to it: the result data of the report's backbone table
(``docs/results/backbones.json``).

For EfficientNet-Lite0/1/2 at 256x256 through ``--layers`` (default: all five stages, the
deepest any method reads), under ``torch.inference_mode`` as methods run them:

- GFLOPs per image, counted by ``torch.utils.flop_counter`` on one image (a multiply-add is
  2 FLOPs; depthwise convolutions count their real, grouped cost), and parameters;
- for every setting of ``--batch-sizes`` x ``--threads`` x channels-last on/off: the median
  wall ms per image over ``--batches`` timed batches, images per second, CPU ms per image (all
  threads; it moves less than the wall clock when other work shares the cores) and the GFLOP/s
  reached. Settings are timed interleaved, so a load change hits all of them alike.

    .venv/bin/python benchmarks/bench_backbones.py [--batches 6] [--models tf_efficientnet_lite0 ...]
    .venv/bin/python -m kit report --no-collect     # the report's backbone table from the file

Run it on a quiet machine; the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from kit.backbones import FeatureExtractor  # noqa: E402
from kit.report import BACKBONES_FILE  # noqa: E402
from kit.weights import OFFLINE_WEIGHTS  # noqa: E402


def gflops_per_image(extractor: FeatureExtractor, size: int) -> float:
    """FLOPs of one forward of one ``size`` x ``size`` image, in GFLOPs."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        extractor(torch.rand(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def time_settings(extractors: dict[bool, FeatureExtractor], batch_sizes: list[int],
                  threads: list[int], size: int, batches: int) -> list[dict]:
    """Median wall and CPU ms per image of every (batch size, threads, channels-last) setting,
    timed interleaved: each round times one batch of every setting."""
    settings = list(itertools.product(batch_sizes, threads, sorted(extractors)))
    gen = torch.Generator().manual_seed(0)
    images = {b: torch.rand(b, 3, size, size, generator=gen) for b in batch_sizes}
    wall: dict[tuple, list[float]] = {s: [] for s in settings}
    cpu: dict[tuple, list[float]] = {s: [] for s in settings}
    with torch.inference_mode():
        for round_ in range(batches + 1):  # round 0 warms up (allocator, kernel selection)
            for setting in settings:
                batch, n_threads, channels_last = setting
                torch.set_num_threads(n_threads)
                start, cpu_start = time.perf_counter(), time.process_time()
                extractors[channels_last](images[batch])
                if round_:
                    wall[setting].append(1000 * (time.perf_counter() - start) / batch)
                    cpu[setting].append(1000 * (time.process_time() - cpu_start) / batch)
    return [{"batch": b, "threads": t, "channels_last": cl,
             "ms_per_image": round(statistics.median(wall[(b, t, cl)]), 2),
             "cpu_ms_per_image": round(statistics.median(cpu[(b, t, cl)]), 2)}
            for b, t, cl in settings]


def bench(name: str, size: int, layers: tuple[int, ...], batch_sizes: list[int],
          threads: list[int], batches: int) -> list[dict]:
    extractors = {cl: FeatureExtractor(name, layers=layers, weights="offline",
                                       channels_last=cl).eval() for cl in (False, True)}
    gflops = round(gflops_per_image(extractors[False], size), 4)
    params = sum(p.numel() for p in extractors[False].parameters()) / 1e6
    load_before = os.getloadavg()[0]
    rows = time_settings(extractors, batch_sizes, threads, size, batches)
    load_after = os.getloadavg()[0]
    for row in rows:
        row.update(model=name, image_size=size, layers=list(layers), gflops=gflops,
                   params_m=round(params, 3), img_per_s=round(1000 / row["ms_per_image"], 1),
                   gflop_per_s=round(gflops * 1000 / row["ms_per_image"], 1),
                   batches=batches, load_before=round(load_before, 2),
                   load_after=round(load_after, 2), torch=torch.__version__,
                   created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=sorted(OFFLINE_WEIGHTS))
    parser.add_argument("--batches", type=int, default=6, help="timed batches per setting")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default=str(BACKBONES_FILE))
    args = parser.parse_args(argv)

    print(f"torch {torch.__version__}, {args.size}x{args.size}, layers {tuple(args.layers)}, "
          f"{args.batches} timed batches per setting")
    print(f"{'model':<24}{'GFLOPs':>8}{'batch':>6}{'threads':>8}{'ch-last':>8}{'ms/img':>9}"
          f"{'img/s':>8}{'GFLOP/s':>9}{'CPU ms/img':>11}")
    rows = []
    for name in args.models:
        for r in bench(name, args.size, tuple(args.layers), args.batch_sizes, args.threads,
                       args.batches):
            print(f"{r['model']:<24}{r['gflops']:>8.2f}{r['batch']:>6}{r['threads']:>8}"
                  f"{'yes' if r['channels_last'] else 'no':>8}{r['ms_per_image']:>9.1f}"
                  f"{r['img_per_s']:>8.1f}{r['gflop_per_s']:>9.1f}{r['cpu_ms_per_image']:>11.1f}")
            rows.append(r)
    Path(args.out).write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
