"""Pooled pixel AUROC against each defective image's own: does a map fail to localise, or does
its level drift from image to image?

Pixel AUROC, as the kit and the papers report it, ranks every pixel of every test image in one
pool, so it asks two things at once: inside an image, are the defect pixels above the rest; and
across images, does a normal image's background stay below another image's defect. For each
run folder and each of its maps (the primary one and every named map) this prints

- ``pooled``: pixel AUROC over all included test images, as in the run's metrics;
- ``per image``: the mean of each defective image's own pixel AUROC (``kit.metrics.
  per_image_pixel_auroc``), which only asks the first question.

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

from kit import metrics as M  # noqa: E402
from kit.data import ImageSet, find_category  # noqa: E402
from kit.pipeline import full_size_scores  # noqa: E402
from kit.runstore import load_run  # noqa: E402


def check(run_dir: Path | str, progress: bool = True) -> dict:
    run = load_run(run_dir)
    cat = find_category(run.config["data_root"], run.config["category"])
    scored = full_size_scores(run_dir, progress=progress)
    masks, include = ImageSet(cat.test, scored.maps.shape[-1]).masks()
    rows = {}
    for name in ["primary", *sorted(scored.named_maps)]:
        maps = scored.of(name)[1]
        rows[name] = {"pooled": round(M.pixel_metrics(maps, masks, include)["pixel_auroc"], 4),
                      "per_image": round(M.per_image_pixel_auroc(maps, masks, include), 4)}
    return {"run": run.name, "method": run.method, "map_size": int(scored.maps.shape[-1]),
            "n_defective": int(sum(1 for s, inc in zip(cat.test, include) if inc and s.label)),
            "maps": rows, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


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
                print(f"  {name:<14} pooled {r['pooled']:.3f}  per image {r['per_image']:.3f}")
            out.write(json.dumps(row, sort_keys=True) + "\n")
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
