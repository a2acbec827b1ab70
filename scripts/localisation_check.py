"""Pooled pixel AUROC against each defective image's own: does a map fail to localise, or does
its level drift from image to image?

Pixel AUROC, as the kit and the papers report it, ranks every pixel of every test image in one
pool, so it asks two things at once: inside an image, are the defect pixels above the rest; and
across images, does a normal image's background stay below another image's defect. For each
run folder and each of its maps (the primary one and every named map) this prints

- ``pooled``: pixel AUROC over all included test images, as in the run's metrics;
- ``per image``: the mean of each defective image's own pixel AUROC (``kit.metrics.
  per_image_pixel_auroc``), which only asks the first question (``kit.compare.localisation``).

On MTD the pool is mostly one defect type (the report's per-defect table gives each type's share
of the defect pixels), so the two numbers also differ by how the types are weighted: the pool
by pixels, the mean by images.

The test split is scored again from the run's checkpoint at the method's full size (the run
folder keeps 8-bit display copies of its maps, whose ties would blur both numbers), so ``pooled``
of the primary map is the run's own pixel AUROC. One JSON line per run, appended to ``--out``.

    .venv/bin/python scripts/localisation_check.py runs/<run> [runs/<run> ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kit.compare import localisation  # noqa: E402
from kit.runstore import load_run  # noqa: E402


def check(run_dir: Path | str, progress: bool = True) -> dict:
    run = load_run(run_dir)
    values = localisation(run_dir, progress=progress, rescore=True)  # a check, not a lookup
    return {"run": run.name, "method": run.method, "map_size": int(run.metrics["image_size"]),
            "n_defective": sum(1 for r in run.scores if r["label"] and r["pixel_included"]),
            "maps": {name: {k: None if v is None else round(v, 4) for k, v in row.items()}
                     for name, row in values.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "localisation_check.jsonl"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    with open(args.out, "a") as out:
        for run_dir in args.runs:
            row = check(run_dir, progress=not args.no_progress)
            print(f"{row['run']}  ({row['n_defective']} defective images, {row['map_size']} px maps)")
            for name, r in row["maps"].items():
                print(f"  {name:<14}" + "".join(f"  {label} " + ("-" if r[key] is None else f"{r[key]:.3f}")
                                                 for key, label in (("pooled", "pooled"),
                                                                    ("per_image", "per image"))))
            out.write(json.dumps(row, sort_keys=True) + "\n")
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
