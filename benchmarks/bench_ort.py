"""The frozen backbone's forward three ways, in one process, timed interleaved: eager PyTorch
as the network comes, PyTorch with its BatchNorms folded into the convolutions (``kit/fold.py``,
``fold_bn=True``) and ONNX Runtime on that folded network (``kit/ort.py``; the kit's default for
a frozen CPU forward without autograd traces the unfolded one, which ONNX Runtime folds itself).

For each backbone (ImageNet weights, every stage the methods tap, channels-last as the methods
run it), image size and batch: the median ms per image of 32 embedded sample test images over
``--repeats``, each way's speed-up over eager PyTorch, and the largest relative difference of
its maps from eager PyTorch's. The load average is printed before and after.

    .venv/bin/python benchmarks/bench_ort.py [--backbones tf_efficientnet_lite0 ...]
        [--sizes 128 256] [--batches 1 8 16] [--repeats 5] [--threads 2]

Run it on a quiet machine (check ``uptime``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere in the repo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+",
                        default=["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("KIT_CACHE_DIR", tempfile.mkdtemp(prefix="kit-bench-ort-"))

    import torch

    from kit.backbones import FeatureExtractor
    from kit.data import ImageSet, find_category
    from kit.paths import DEFAULT_CATEGORY, SAMPLE_ROOT

    torch.set_num_threads(args.threads)
    cat = find_category(SAMPLE_ROOT, DEFAULT_CATEGORY)
    print(f"load average before: {os.getloadavg()[0]:.2f}; torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    print(f"{'backbone':<24} {'px':>4} {'batch':>5}  {'eager ms':>9} {'folded ms':>10} "
          f"{'ORT ms':>8}  {'folded x':>8} {'ORT x':>6}  {'max rel diff (folded, ORT)':>27}")
    for name in args.backbones:
        plain = FeatureExtractor(name, (1, 2, 3, 4), "offline", channels_last=True)
        folded = FeatureExtractor(name, (1, 2, 3, 4), "offline", channels_last=True, fold_bn=True)
        for size in args.sizes:
            images = ImageSet(cat.test[:32], size).tensor(progress=False).float() / 255.0
            for batch in args.batches:
                ways = {"eager": (plain, "torch"), "folded": (folded, "torch"),
                        "ort": (folded, "auto")}
                times: dict[str, list[float]] = {way: [] for way in ways}
                maps = {}
                with torch.inference_mode():
                    for way, (model, runtime) in ways.items():  # warm-up; ORT traces its graphs
                        os.environ["KIT_BACKBONE_RUNTIME"] = runtime
                        maps[way] = [model(images[i:i + batch]) for i in range(0, 32, batch)]
                    for _ in range(args.repeats):
                        for way, (model, runtime) in ways.items():
                            os.environ["KIT_BACKBONE_RUNTIME"] = runtime
                            start = time.perf_counter()
                            for first in range(0, len(images), batch):
                                model(images[first:first + batch])
                            times[way].append(1000 * (time.perf_counter() - start) / len(images))
                os.environ["KIT_BACKBONE_RUNTIME"] = "auto"
                ms = {way: statistics.median(t) for way, t in times.items()}
                diff = {way: max(float((a - b).abs().max() / b.abs().max())
                                 for got, want in zip(maps[way], maps["eager"])
                                 for a, b in zip(got, want)) for way in ("folded", "ort")}
                print(f"{name:<24} {size:>4} {batch:>5}  {ms['eager']:>9.2f} {ms['folded']:>10.2f} "
                      f"{ms['ort']:>8.2f}  {ms['eager'] / ms['folded']:>8.2f} "
                      f"{ms['eager'] / ms['ort']:>6.2f}  {diff['folded']:>13.1e} {diff['ort']:>13.1e}",
                      flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
