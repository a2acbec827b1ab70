"""PaDiM's predict against the bare backbone forward it is built on, in one process.

At 256x256, batch 1 (one image as the dashboard scores an upload), 2 CPU threads: the median
ms of ``FeatureExtractor`` (same backbone, layers and weights as the PaDiM config, under
torch.inference_mode) and of ``Padim.predict`` (fitted on a few real training images: the
cost of predict does not depend on what the Gaussians learned, only on their size), timed
interleaved so both see the same machine, and their ratio (the issue's target: at most 1.5).

    .venv/bin/python benchmarks/bench_padim.py [--repeats 40] [--fit-images 16] [--threads 2]
    .venv/bin/python benchmarks/bench_padim.py --data-root ../shared/data/mtd --profile

Run it on a quiet machine (check `uptime`); it prints the load average before and after.
``--profile`` also prints torch.profiler's table of predict's operators.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from kit.backbones import FeatureExtractor  # noqa: E402
from kit.data import ImageSet, find_category  # noqa: E402
from kit.methods.padim import Padim, PadimConfig  # noqa: E402
from kit.paths import DEFAULT_CATEGORY, SAMPLE_ROOT  # noqa: E402


def timed(fn, *args) -> tuple[float, float]:
    """(wall ms, CPU ms of all threads) of one call."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn(*args)
    return 1000 * (time.perf_counter() - start), 1000 * (time.process_time() - cpu_start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(SAMPLE_ROOT),
                        help="folder of category folders (default: the embedded sample)")
    parser.add_argument("--category", default=DEFAULT_CATEGORY)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--fit-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=40, help="timed calls of each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also profile predict's operators")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    cat = find_category(args.data_root, args.category)
    config = PadimConfig(image_size=args.size)
    method = Padim(config)
    method.fit(ImageSet(cat.train[:args.fit_images], args.size))
    backbone = FeatureExtractor(config.backbone, config.layers, config.weights)
    images = ImageSet(cat.test[:args.batch_size], args.size).tensor().float() / 255.0

    def forward(x: torch.Tensor) -> None:
        with torch.inference_mode():
            backbone(x)

    for _ in range(3):  # warm-up: allocator, kernel selection, lazily built buffers
        forward(images)
        method.predict(images)
    wall: dict[str, list[float]] = {"backbone": [], "predict": []}
    cpu: dict[str, list[float]] = {"backbone": [], "predict": []}
    for i in range(args.repeats):
        # interleaved, alternating the order: a burst of other work hits both alike
        order = (("backbone", forward), ("predict", method.predict))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            w, c = timed(fn, images)
            wall[name].append(w)
            cpu[name].append(c)
    load_after = os.getloadavg()

    med = {k: statistics.median(v) for k, v in wall.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.size}x{args.size}, {config.backbone} layers {config.layers}, "
          f"d={len(method.channel_idx)}, grid {method.grid}, {args.repeats} interleaved repeats, "
          f"fitted on {args.fit_images} images of {args.data_root}")
    print(f"load average before {tuple(round(x, 2) for x in load_before)}, "
          f"after {tuple(round(x, 2) for x in load_after)}")
    print(f"{'':<10}{'median ms':>11}{'best ms':>10}{'CPU ms':>9}")
    for name in ("backbone", "predict"):
        print(f"{name:<10}{med[name]:>11.1f}{min(wall[name]):>10.1f}{cpu_med[name]:>9.1f}")
    print(f"ratio predict/backbone: {med['predict'] / med['backbone']:.2f} (median), "
          f"{min(wall['predict']) / min(wall['backbone']):.2f} (best), "
          f"{cpu_med['predict'] / cpu_med['backbone']:.2f} (CPU time)")

    if args.profile:
        profile(method, images, args.repeats)


def profile(method: Padim, images: torch.Tensor, repeats: int) -> None:
    """torch.profiler's table of predict's operators (where the time above goes)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            method.predict(images)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
