"""Throughput of the offline backbones as feature extractors.

Images per second for EfficientNet-Lite0/1/2 at 256x256, batch 8, layers (1, 2, 3) (strides
4, 8, 16), 2 CPU threads, under torch.inference_mode (how methods cache training features).
Wall-clock numbers depend on what else runs on the machine; the CPU time per image does not
(much), so compare that column between runs made under different load.

    python benchmarks/bench_backbones.py [--batches 6] [--models tf_efficientnet_lite0 ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from kit.backbones import FeatureExtractor  # noqa: E402
from kit.weights import OFFLINE_WEIGHTS  # noqa: E402


def bench(name: str, batches: int, batch_size: int, size: int, layers: tuple[int, ...]) -> dict:
    extractor = FeatureExtractor(name, layers=layers, weights="offline")
    images = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    times, cpu_times = [], []
    with torch.inference_mode():
        extractor(images)  # warm-up: first calls pay for allocator and kernel selection
        for _ in range(batches):
            start, cpu_start = time.perf_counter(), time.process_time()
            extractor(images)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    # The median batch time resists the odd slow batch caused by other work on the machine.
    median = statistics.median(times)
    return {
        "name": name,
        "img_per_s": batch_size / median,
        "best_img_per_s": batch_size / min(times),
        "ms_per_image": 1000 * median / batch_size,
        # CPU time (all threads) hardly changes when other jobs share the cores, unlike the
        # wall clock, so it is the number to compare across noisy runs.
        "cpu_ms_per_image": 1000 * statistics.median(cpu_times) / batch_size,
        "channels": extractor.channels,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=sorted(OFFLINE_WEIGHTS))
    parser.add_argument("--batches", type=int, default=6, help="timed batches per model")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, "
        f"{args.size}x{args.size}, layers {tuple(args.layers)}, {args.batches} timed batches"
    )
    print(
        f"{'model':<24}{'img/s (median)':>16}{'img/s (best)':>14}{'ms/img':>9}"
        f"{'CPU ms/img':>12}  channels"
    )
    for name in args.models:
        r = bench(name, args.batches, args.batch_size, args.size, tuple(args.layers))
        print(
            f"{r['name']:<24}{r['img_per_s']:>16.1f}{r['best_img_per_s']:>14.1f}"
            f"{r['ms_per_image']:>9.1f}{r['cpu_ms_per_image']:>12.1f}  {r['channels']}"
        )


if __name__ == "__main__":
    main()
