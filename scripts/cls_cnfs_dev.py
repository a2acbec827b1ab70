"""CLS-CNFs' pixel classifier on a development protocol that never touches the test split.

Trains only the pixel network (Alg. 1 step 1) of ``cls_cnfs`` on a seeded subset of MTD's
``train/good`` fit split, then scores its map A_p on synthetic defects (the same recipe, keys
never used in training) on 32 held-out normal images: pixel AUROC, AUPR and AUPRO there are the
criterion the budgets' classifier settings (learning rate, epochs, output stride) were chosen
by. One JSON line per setting, printed and appended to ``--out``.

    .venv/bin/python scripts/cls_cnfs_dev.py --images 160 \\
        --setting '{"decoder_epochs": 30, "decoder_out_stride": 4, "cls_lr": 3e-3}' ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit import metrics as M  # noqa: E402
from kit.data import ImageSet, find_category, split_train_val, subsample  # noqa: E402
from kit.method import FitContext, make_method  # noqa: E402
from kit.paths import default_data_root  # noqa: E402
from kit.pipeline import synthetic_generator  # noqa: E402

HELD_OUT_KEY = 10**9  # synthetic keys of the evaluation: never a training key


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--images", type=int, default=160, help="fit images (seeded subset)")
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--setting", action="append", default=[], help="JSON overrides (repeatable)")
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    cat = find_category(args.data_root or default_data_root(), "magnetic_tile")
    fit, val = split_train_val(cat.train, 0.1, 0)
    fit, val = subsample(fit, args.images, 0), val[:args.held_out]
    for spec in args.setting or ["{}"]:
        overrides = json.loads(spec)
        method = make_method("cls_cnfs", "quick", **{"max_train_images": None, "joint_epochs": 0,
                                                     **overrides})
        size = method.config.image_size
        train, held_out = ImageSet(fit, size), ImageSet(val, size)
        context = FitContext(held_out=held_out, progress=False,
                             synthetic=synthetic_generator(fit, cat.name, size, 0))
        load, start = os.getloadavg()[0], time.perf_counter()
        log = method.fit_pixel_network(train, context)
        seconds = time.perf_counter() - start
        clean = torch.stack([(held_out[i] * 255).round().to(torch.uint8) for i in range(len(val))])
        defects, _, masks = method.synthetic_set(method.generator(train, context), clean,
                                                 HELD_OUT_KEY, False, "")
        with torch.inference_mode():
            a_p = torch.cat([torch.sigmoid(method.decoder(method.extractor(
                defects[i:i + 8].float() / 255), size)[:, 0]) for i in range(0, len(defects), 8)])
        found = M.pixel_metrics(a_p.numpy(), masks.numpy())
        row = {"overrides": overrides, "fit_images": len(fit), "held_out": len(val),
               "seconds": round(seconds), "load_at_start": round(load, 2),
               "final_losses": log[f"{method.config.head}_loss"][-3:],
               "heldout_synthetic": {k: round(v, 4) for k, v in found.items() if v is not None}}
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
