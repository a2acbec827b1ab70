#!/usr/bin/env bash
# Every DifferNet number in notebooks/01_differnet.ipynb and in the issue-3 note, from scratch.
# Run from the repository root on a quiet machine; long steps print their own timings.
# Data: ../shared/data/mtd (Magnetic Tile Defects, DifferNet's own split). Runs land in runs/.
# Feature cache: .cache/features (safe to delete; a second pass skips the backbone).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MTD=../shared/data/mtd
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# 1. development protocol (training data only: held-out normals + synthetic defects)
$PY scripts/differnet_dev.py extract --size 224
$PY scripts/differnet_dev.py sweep --size 224 --standardize 1 0 \
    --settings "paper-like" "stages3-4 mean, 2" "stages3-4 mean+max, 2"
$PY scripts/differnet_dev.py sweep --size 224 --standardize 1 \
    --settings "stage4 mean, 1" "mean+std" "stages2-4" "stage3 mean+max" "mean+max, 1 scale" "mean+max, 3 scales"

# 2. the two budgets on the test split (one run each, settings fixed beforehand)
$PY -m kit fit --method differnet --budget quick --data-root $MTD --out runs/differnet-mtd-quick --overwrite --quiet
$PY -m kit fit --method differnet --budget full  --data-root $MTD --out runs/differnet-mtd-full  --overwrite --quiet
# the embedded sample (what the test suite and the quick notebook use)
$PY -m kit fit --method differnet --budget quick --data-root kit/sample --out runs/differnet-sample-quick --overwrite --quiet

# 3. inference cost (ms per image by number of test transforms and gradient maps)
$PY benchmarks/bench_differnet.py --threads 2

# 4. the paper's experiments as tagged runs (Table 3 A-G; Fig. 7 with three subsets per size)
$PY -m kit ablation differnet table3 --data-root $MTD --budget full --quiet
$PY -m kit ablation differnet train_size --data-root $MTD --budget full --seeds 0 1 2 --quiet

# 5. the notebook in its full setting (reuses the runs above)
KIT_NOTEBOOK_BUDGET=full .venv/bin/jupyter nbconvert --to notebook --execute \
    --ExecutePreprocessor.timeout=-1 --output-dir artifacts/notebooks notebooks/01_differnet.ipynb
