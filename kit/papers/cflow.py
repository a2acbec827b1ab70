"""CFlow-AD's paper: Gudovskiy, Ishizaka, Kozuka, WACV 2022 (method: kit/methods/cflow.py).

Its text is not among the seeds; CLS-CNFs (seed ``cls-cnfs_oh-kim2024.txt``) restates its
equations (eq. 2-8) and reports it as FE_PRE-CNFs, the numbers quoted here.
"""

from __future__ import annotations

from kit.papers import Paper

PAPER = Paper(
    method="cflow",
    title="CFlow-AD (Gudovskiy et al., WACV 2022)",
    citation="D. Gudovskiy, S. Ishizaka, K. Kozuka. CFLOW-AD: Real-Time Unsupervised Anomaly "
             "Detection with Localization via Conditional Normalizing Flows. WACV 2022.",
    seed_file="cls-cnfs_oh-kim2024.txt",
    results={
        # CLS-CNFs Table 1 / 4 (CFlow-AD = FE_PRE-CNFs, 6 coupling blocks, WRN50, 256 px)
        "mvtec_mean": {"image_auroc": 0.9671, "pixel_auroc": 0.9791, "pixel_aupr": 0.5771,
                       "aupro": 0.9393},
        "btad_mean": {"image_auroc": 0.9537, "pixel_auroc": 0.9701, "pixel_aupr": 0.5123,
                      "aupro": 0.7194},  # CLS-CNFs Table 6
    },
    budget_notes={  # CFlowConfig.BUDGETS holds the values
        "quick": "One pass over every training fiber (about 0.7 M fibers per epoch on MTD at 256 "
                 "px): the budget of anomalib's one-epoch CFlow, the peer it is measured against.",
        "full": "Three passes: as many as fit in anomalib's one-epoch fit time (384 s) here. The "
                "code's 200 sub-epochs are out of reach on 2 CPU cores; the encoder's features "
                "are extracted once (no 5-degree rotation augmentation), so every further epoch "
                "costs only the flows. The flows are built as the code's FrEIA AllInOneBlock: a "
                "random rotation between couplings and a learned global affine per block.",
    },
)
