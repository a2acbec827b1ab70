"""B-PFM's paper: Wan, Gao, Li, Wen, IEEE TII 2022 (method: kit/methods/bpfm.py).

The kit has no text of this paper; its numbers here are the ones NF-BMR's paper reports for it.
"""

from __future__ import annotations

from kit.papers import Paper

PAPER = Paper(
    method="bpfm",
    title="B-PFM (Wan et al., TII 2022)",
    citation="Q. Wan, L. Gao, X. Li, L. Wen. Unsupervised Image Anomaly Detection and "
             "Segmentation Based on Pretrained Feature Mapping. IEEE Transactions on Industrial "
             "Informatics 19(3), 2022.",
    budget_notes={  # BPfmConfig.BUDGETS holds the values
        "quick": "256 px (8 x 8 maps at stride 32), 240 training images, 20 epochs of the 1x1 "
                 "mapping: about a minute of training on 2 cores after feature extraction.",
        "full": "384 px (12 x 12 maps; NF-BMR: 768 px, 24 x 24), NF-BMR's full-budget size, every "
                "training image, 60 epochs of the mapping (the PFM code: 200). The backbones run once per image: their "
                "features are cached, so the epochs cost only the small mapping.",
    },
)
