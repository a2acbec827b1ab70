"""NF-BMR on a development protocol that never touches the test split.

Fits ``nf_bmr`` with the given overrides on a seeded subset of MTD's fit split (the pipeline's
split: 10 % of ``train/good`` held out, seed 0), then scores the held-out normal images and one
synthetic defective copy of each (``scripts/differnet_dev.py``'s pixel-sized texture / blob /
line defects from ``kit.synthetic``). The image AUROC there, normal vs synthetic, of every map
is the criterion the budgets' input size and stage were chosen by. One JSON line per setting, printed and appended to ``--out``.

    .venv/bin/python scripts/nf_bmr_dev.py --images 240 \\
        --setting '{"image_size": 256}' --setting '{"image_size": 512}' ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from differnet_dev import dev_defects  # noqa: E402

from kit import metrics as M  # noqa: E402
from kit.data import ImageSet, find_category, split_train_val, subsample  # noqa: E402
from kit.method import FitContext, make_method  # noqa: E402
from kit.paths import default_data_root  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--method", default="nf_bmr")
    parser.add_argument("--images", type=int, default=240, help="fit images (seeded subset)")
    parser.add_argument("--setting", action="append", default=[], help="JSON overrides (repeatable)")
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    cat = find_category(args.data_root or default_data_root(), "magnetic_tile")
    fit, val = split_train_val(cat.train, 0.1, 0)
    fit = subsample(fit, args.images, 0)
    for spec in args.setting or ["{}"]:
        overrides = json.loads(spec)
        method = make_method(args.method, "quick", **{"max_train_images": None, **overrides})
        size = method.config.image_size
        normal = ImageSet(val, size).tensor().float() / 255
        defect = dev_defects(val, normal, [s.path for s in fit], size)
        load, start = os.getloadavg()[0], time.perf_counter()
        log = method.fit(ImageSet(fit, size), FitContext(progress=False))
        seconds = time.perf_counter() - start
        preds = [method.predict(x[i:i + 8]) for x in (normal, defect) for i in range(0, len(x), 8)]
        names = ["primary", *preds[0].named_maps]
        row = {"method": args.method, "overrides": overrides, "fit_images": len(fit),
               "held_out": len(val), "seconds": round(seconds), "load_at_start": round(load, 2)}
        labels = np.r_[np.zeros(len(normal)), np.ones(len(defect))]
        for name in names:
            maps = torch.cat([p.anomaly_maps if name == "primary" else p.named_maps[name] for p in preds])
            scores = maps.flatten(1).max(1).values.numpy()
            row[name] = {"image_auroc": round(M.image_auroc(scores, labels), 4)}
        row["final_losses"] = {k: v[-1] for k, v in log.items() if isinstance(v, list) and v}
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
