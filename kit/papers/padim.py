"""PaDiM's paper: Defard, Setkov, Loesch, Audigier, ICPR Workshops 2021 (kit/methods/padim.py)."""

from __future__ import annotations

from kit.papers import Paper

PAPER = Paper(
    method="padim",
    title="PaDiM (Defard et al., 2021)",
    citation="T. Defard, A. Setkov, A. Loesch, R. Audigier. PaDiM: a Patch Distribution Modeling "
             "Framework for Anomaly Detection and Localization. ICPR International Workshops "
             "and Challenges, 2021.",
    budget_notes={  # PadimConfig.BUDGETS holds the values
        "quick": "One pass over the training images either way: the quick budget differs only in "
                 "the data you give it.",
        "full": "The config's defaults: the paper's values, with Lite0 standing in for its "
                "ResNet (see PadimConfig's comments).",
    },
)
