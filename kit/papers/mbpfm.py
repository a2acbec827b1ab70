"""MB-PFM: the multi-layer B-PFM of Wan et al., IEEE TII 2022 (method: kit/methods/mbpfm.py)."""

from __future__ import annotations

from kit.papers import Paper

PAPER = Paper(
    method="mbpfm",
    title="MB-PFM (Wan et al., TII 2022)",
    citation="Q. Wan, L. Gao, X. Li, L. Wen. Unsupervised Image Anomaly Detection and "
             "Segmentation Based on Pretrained Feature Mapping. IEEE Transactions on Industrial "
             "Informatics 19(3), 2022.",
    # NF-BMR's Table 1 gives MB-PFM 1.2 points below its own 98.7 on MVTec AD (its text)
    results={"mvtec_mean": {"image_auroc": 0.975}},
    budget_notes={  # MBPfmConfig.BUDGETS holds the values
        "quick": "As B-PFM's quick budget, with three stages and one mapping per stage.",
        "full": "As B-PFM's full budget, with three stages (strides 8, 16, 32) and one mapping "
                "per stage (the PFM code: ResNet layer1-3 at 256 px, 200 epochs).",
    },
)
