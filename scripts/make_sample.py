"""Rebuild the embedded sample kit/sample/magnetic_tile from ../shared/data/mtd (seeded).

    python scripts/make_sample.py [--source ../shared/data/mtd/magnetic_tile]

Keeps the DifferNet split: training images come from train/good, test images from test/.
One `uneven` image with an empty mask is included on purpose, so the pixel-metric exclusion
path runs on real data.
"""

import argparse
import random
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST_GOOD, N_PER_DEFECT = 100, 25, 8
EMPTY_MASK = "exp3_num_45042"  # labelled `uneven` but its mask has no defect pixels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default=str(REPO.parent / "shared/data/mtd/magnetic_tile"))
    args = parser.parse_args()
    src = Path(args.source)
    dst = REPO / "kit/sample/magnetic_tile"
    if dst.exists():
        shutil.rmtree(dst)
    rng = random.Random(0)

    def copy(rel: Path) -> None:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)

    train = sorted((src / "train/good").glob("*.jpg"))
    for p in rng.sample(train, N_TRAIN):
        copy(p.relative_to(src))
    good = sorted((src / "test/good").glob("*.jpg"))
    for p in rng.sample(good, N_TEST_GOOD):
        copy(p.relative_to(src))
    for defect_dir in sorted(d for d in (src / "test").iterdir() if d.name != "good"):
        images = sorted(p for p in defect_dir.glob("*.jpg") if p.stem != EMPTY_MASK)
        chosen = rng.sample(images, N_PER_DEFECT)
        if defect_dir.name == "uneven":
            chosen[-1] = defect_dir / f"{EMPTY_MASK}.jpg"
        for p in chosen:
            copy(p.relative_to(src))
            copy(Path("ground_truth") / defect_dir.name / f"{p.stem}_mask.png")
    shutil.copy2(src.parent / "SOURCE.txt", REPO / "kit/sample/SOURCE.txt")
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"wrote {dst} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
