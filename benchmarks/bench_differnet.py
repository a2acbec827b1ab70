"""DifferNet inference cost on this machine: ms per image for a budget, by number of test
transforms and gradient maps, with the feature cache off (what a new image costs).

    .venv/bin/python benchmarks/bench_differnet.py                 # quick and full budgets
    .venv/bin/python benchmarks/bench_differnet.py --threads 2 --set image_size=448 scales=[448,224,112]

Run it on a quiet machine (check `uptime`); it prints the load average with the numbers.
The flow is built untrained: its cost does not depend on its weights.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from kit.data import ImageSet, find_category
from kit.methods.differnet import DifferNet, DifferNetConfig
from kit.paths import SAMPLE_ROOT


def bench(budget: str, overrides: dict, n_images: int = 16, batch: int = 8) -> list[dict]:
    cat = find_category(SAMPLE_ROOT, "magnetic_tile")
    rows = []
    for n_test, n_map in ((16, 0), (16, 1), (16, 4), (8, 2), (4, 1), (1, 0)):
        cfg = DifferNetConfig.for_budget(budget, cache=False, n_test_transforms=n_test,
                                         n_map_transforms=n_map, **overrides)
        m = DifferNet(cfg)
        m.flow = m.build_flow().eval()
        images = ImageSet(cat.test[:n_images], cfg.image_size)
        batches = list(images.batches(batch))
        m.predict(batches[0][:2])  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            m.predict(b)
        ms = 1000 * (time.perf_counter() - t0) / n_images
        rows.append({"budget": budget, "image_size": cfg.image_size, "scales": list(cfg.scales),
                     "layers": list(cfg.layers), "n_test_transforms": n_test, "n_map_transforms": n_map,
                     "ms_per_image": round(ms, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", nargs="+", default=["quick", "full"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], help="key=json overrides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.set:
        k, v = item.split("=", 1)
        v = json.loads(v)
        overrides[k] = tuple(v) if isinstance(v, list) else v
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    for budget in args.budgets:
        bench(budget, overrides)
    if not overrides:  # smaller single scales than the quick budget's 128 px: what fits 100 ms
        for size in (112, 96):
            bench("quick", {"image_size": size, "scales": (size,)}, n_images=16)


if __name__ == "__main__":
    main()
