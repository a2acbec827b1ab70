"""The bare backbone forward with glibc's default allocator settings and with the kit's
(``kit/allocator.py``), each in a fresh process: what the allocator costs every method.

EfficientNet-Lite0 (ImageNet weights) through stage 4 at ``--size`` px on 32 embedded sample
test images, at each ``--batches`` size, ``--threads`` torch threads, torch.inference_mode.
Prints per setting and batch the median ms per image over ``--repeats``, the kernel (system)
seconds and minor page faults of the timed forwards, and the peak RSS, then the ratio default /
tuned, with the load average before and after.

    .venv/bin/python benchmarks/bench_allocator.py [--batches 1 4 8] [--repeats 5] [--size 256]

Run it on a quiet machine (check ``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere in the repo


def forward(batch: int, repeats: int, threads: int, size: int) -> dict:
    """Time the forward in this process; the allocator is as this process started it."""
    import resource
    import statistics
    import time

    import psutil
    import torch
    from threadpoolctl import threadpool_limits

    import kit.allocator
    from kit.backbones import FeatureExtractor
    from kit.data import ImageSet, find_category
    from kit.paths import DEFAULT_CATEGORY, SAMPLE_ROOT

    torch.set_num_threads(threads)
    cat = find_category(SAMPLE_ROOT, DEFAULT_CATEGORY)
    images = ImageSet(cat.test[:32], size).tensor(progress=False).float() / 255.0
    model = FeatureExtractor("tf_efficientnet_lite0", (1, 2, 3, 4), channels_last=True).eval()
    times = []
    # threadpool_limits: a Dask worker starts OpenMP at one thread (bench_grid_worker.py)
    with threadpool_limits(threads), torch.inference_mode():
        model(images[:batch])  # warm-up
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(repeats):
            start = time.perf_counter()
            for first in range(0, len(images), batch):
                model(images[first:first + batch])
            times.append(1000 * (time.perf_counter() - start) / len(images))
        after = resource.getrusage(resource.RUSAGE_SELF)
    return {"tuned": kit.allocator.tuned, "ms_per_image": statistics.median(times),
            "sys_s": after.ru_stime - before.ru_stime, "user_s": after.ru_utime - before.ru_utime,
            "minor_faults": after.ru_minflt - before.ru_minflt,
            "rss_mb": psutil.Process().memory_info().rss / 2**20}


def in_fresh_process(tune: str, batch: int, args) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import bench_allocator as b; print(json.dumps(b.forward({batch}, {args.repeats}, "
            f"{args.threads}, {args.size})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "KIT_TUNE_MALLOC": tune})
    return json.loads(out.stdout.splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    print(f"load before {os.getloadavg()[0]:.2f}; Lite0 stages 1-4 at {args.size} px, "
          f"{args.threads} threads")
    print(f"{'allocator':<16} {'batch':>5} {'ms/image':>9} {'sys s':>7} {'user s':>7} "
          f"{'faults':>9} {'RSS MB':>7}")
    for batch in args.batches:
        rows = {}
        for tune, name in (("0", "glibc default"), ("1", "kit (tuned)")):
            rows[name] = r = in_fresh_process(tune, batch, args)
            print(f"{name:<16} {batch:>5} {r['ms_per_image']:>9.1f} {r['sys_s']:>7.2f} "
                  f"{r['user_s']:>7.2f} {r['minor_faults']:>9} {r['rss_mb']:>7.0f}")
        ratio = rows["glibc default"]["ms_per_image"] / rows["kit (tuned)"]["ms_per_image"]
        print(f"{'':<16} {batch:>5} default / tuned: x{ratio:.2f}")
    print(f"load after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
