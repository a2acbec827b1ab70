"""NDP-Net's inference against the bare encoder backbone, in one process.

At the full budget's input size (256 px, the paper's; ``--size`` for another), batch 1, 2 CPU
threads: the median ms of the bare backbone (EfficientNet-Lite0's five stages, the forward pass
NDP-Net's encoder makes) and of ``predict``, timed interleaved, and their ratio. ``predict``
makes the primary map (encoder, RBAM, decoder, the re-encoded reconstruction and the MSDSM)
and Table VI's named maps on the same pass; ``--primary-only`` times it without the named maps.

Timing needs no training: a forward pass costs the same whatever the weights learned, so the
learned parts keep their initial values and the reference is the first training image.

    .venv/bin/python benchmarks/bench_ndp_net.py [--repeats 20] [--threads 2] [--size 256]

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

from kit.backbones import FeatureExtractor  # noqa: E402
from kit.data import ImageSet, find_category  # noqa: E402
from kit.method import make_method  # noqa: E402
from kit.methods.ndp_net import STAGES  # noqa: E402
from kit.paths import DEFAULT_CATEGORY, SAMPLE_ROOT  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(SAMPLE_ROOT))
    parser.add_argument("--category", default=DEFAULT_CATEGORY)
    parser.add_argument("--size", type=int, default=None, help="input size (default: the full budget's)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    method = make_method("ndp_net", "full", device="cpu", **({"image_size": args.size} if args.size else {}))
    size = method.config.image_size
    cat = find_category(args.data_root, args.category)
    method.set_reference(ImageSet(cat.train[:1], size).tensor()[0], str(cat.train[0].path))
    method.load_state_dict(method.state_dict())
    bare = FeatureExtractor(method.config.backbone, STAGES, method.config.weights, channels_last=True)
    one = ImageSet(cat.test[:1], size).tensor().float() / 255.0

    def backbone(x):
        with torch.inference_mode():
            bare(x)

    def primary_only(x):
        method.config.table6_maps = False
        try:
            return method.predict(x)
        finally:
            method.config.table6_maps = True

    wall = interleaved({"backbone": backbone, "predict": method.predict, "primary": primary_only},
                       one, args.repeats)
    med = {k: statistics.median(v) for k, v in wall.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, {size}x{size}, "
          f"{method.config.backbone} (5 stages), {args.repeats} repeats, load {load_before[0]:.2f} before")
    print(f"  {'bare backbone':<34}{med['backbone']:8.1f} ms")
    print(f"  {'ndp_net predict (all maps)':<34}{med['predict']:8.1f} ms   x{med['predict'] / med['backbone']:.2f} the backbone")
    print(f"  {'ndp_net predict (primary map)':<34}{med['primary']:8.1f} ms   x{med['primary'] / med['backbone']:.2f} the backbone")
    print(f"load {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
