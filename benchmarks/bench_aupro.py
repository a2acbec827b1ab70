"""Time kit.metrics.aupro and pixel_metrics on the full MTD test set at 256x256.

Real ground-truth masks, synthetic anomaly maps (a blurred, noisy version of each mask, seeded),
so the numbers measure the metric code, not a method. Not a test: run it by hand.

    .venv/bin/python benchmarks/bench_aupro.py [--size 256] [--seed 0] [--sklearn]

Data: $KIT_DATA_ROOT/magnetic_tile if KIT_DATA_ROOT is set, else ../shared/data/mtd/magnetic_tile
relative to the repo root. Masks: ground_truth/<defect>/<stem>_mask.png, binarised > 127;
test/good images have no mask (all zeros). Defect images whose mask is empty after resizing
get include=False, as the evaluation pipeline does.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere without installing the kit

from kit.metrics import aupro, pixel_metrics  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def data_dir() -> Path:
    root = os.environ.get("KIT_DATA_ROOT")
    base = Path(root) if root else REPO.parent / "shared" / "data" / "mtd"
    path = base / "magnetic_tile"
    if not (path / "test").is_dir():
        sys.exit(f"MTD test split not found: {path / 'test'} (set KIT_DATA_ROOT)")
    return path


def load_masks(path: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """-> masks [N, size, size] bool, labels [N] bool, defect type per image."""
    masks, labels, kinds = [], [], []
    for kind_dir in sorted(p for p in (path / "test").iterdir() if p.is_dir()):
        for image in sorted(p for p in kind_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            if kind_dir.name == "good":
                mask = np.zeros((size, size), dtype=bool)
            else:
                mask_file = path / "ground_truth" / kind_dir.name / f"{image.stem}_mask.png"
                with Image.open(mask_file) as m:
                    # nearest: a resized mask stays binary and keeps thin defects sharp
                    small = m.convert("L").resize((size, size), Image.NEAREST)
                mask = np.asarray(small) > 127
            masks.append(mask)
            labels.append(kind_dir.name != "good")
            kinds.append(kind_dir.name)
    return np.stack(masks), np.array(labels), kinds


def synthetic_maps(masks: np.ndarray, seed: int) -> np.ndarray:
    """A plausible imperfect detector: blurred mask (soft, spills over edges) plus noise."""
    rng = np.random.default_rng(seed)
    maps = np.empty(masks.shape, dtype=np.float32)
    for i, mask in enumerate(masks):
        blurred = ndimage.gaussian_filter(mask.astype(np.float32), sigma=3.0)
        maps[i] = blurred + rng.normal(0.0, 0.25, mask.shape).astype(np.float32)
    return maps


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sklearn", action="store_true",
                        help="also compute pixel AUROC/AUPR with sklearn (slow, memory-hungry)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    masks, labels, _ = load_masks(data_dir(), args.size)
    include = ~labels | masks.reshape(len(masks), -1).any(axis=1)
    maps = synthetic_maps(masks, args.seed)
    print(f"loaded {len(masks)} images ({labels.sum()} defective, "
          f"{(~include).sum()} excluded for empty masks) in {time.perf_counter() - t0:.1f} s")
    n_pixels = int(include.sum()) * args.size ** 2
    n_anomalous = int(masks[include].sum())
    print(f"pixels in pixel metrics: {n_pixels:,} ({n_anomalous:,} anomalous), maps {maps.dtype}")
    print(f"peak memory after loading: {peak_mb():.0f} MB")

    t0 = time.perf_counter()
    value = aupro(maps, masks, include)
    print(f"aupro:         {time.perf_counter() - t0:6.2f} s  aupro={value:.6f}")

    t0 = time.perf_counter()
    result = pixel_metrics(maps, masks, include)
    seconds = time.perf_counter() - t0
    values = "  ".join(f"{k}={v:.6f}" for k, v in result.items())
    print(f"pixel_metrics: {seconds:6.2f} s  {values}")
    print(f"peak memory: {peak_mb():.0f} MB")

    if args.sklearn:
        from sklearn.metrics import average_precision_score, roc_auc_score
        y, s = masks[include].ravel(), maps[include].ravel()
        t0 = time.perf_counter()
        auroc, ap = roc_auc_score(y, s), average_precision_score(y, s)
        print(f"sklearn:       {time.perf_counter() - t0:6.2f} s  pixel_auroc={auroc:.6f}  "
              f"pixel_aupr={ap:.6f}  (differences {abs(auroc - result['pixel_auroc']):.1e}, "
              f"{abs(ap - result['pixel_aupr']):.1e})")
        print(f"peak memory with sklearn: {peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
