"""CLS-CNFs' paper: Oh and Kim, IEEE Access 2024 (method: kit/methods/cls_cnfs.py)."""

from __future__ import annotations

from kit.papers import Ablation, AblationVariant, Paper

SHARED = {"pre_flows": True}  # one run holds all five maps of Table 2

PAPER = Paper(
    method="cls_cnfs",
    title="CLS-CNFs (Oh and Kim, IEEE Access 2024)",
    citation="S. Oh, J. Kim. Anomaly Detection Using Normalizing Flow-Based Density Estimation "
             "and Synthetic Defect Classification. IEEE Access 12, 2024.",
    seed_file="cls-cnfs_oh-kim2024.txt",
    results={
        "mvtec_mean": {"image_auroc": 0.9809, "pixel_auroc": 0.9859, "pixel_aupr": 0.7209,
                       "aupro": 0.9569},  # Table 2 / 4, A
        "btad_mean": {"image_auroc": 0.9597, "pixel_auroc": 0.9712, "pixel_aupr": 0.5376,
                      "aupro": 0.7266},  # Table 5 / 6, A
    },
    ablations=(
        Ablation(
            name="table1",
            title="Table 1: the CNFs' feature extractor: pretrained, fine-tuned by regression, "
                  "fine-tuned by classification",
            metric="pixel_auroc",
            paper_dataset="MVTec AD mean over 15 categories",
            variants=[
                AblationVariant("FE_PRE", dict(SHARED), 0.9791, map="A_nf_pre",
                                source=("table2", "A_nf_pre")),
                AblationVariant("FE_REG", {"head": "reg"}, 0.9473, map="A_nf"),
                AblationVariant("FE_CLS", dict(SHARED), 0.9828, map="A_nf", source=("table2", "A_nf")),
            ],
            note="Each variant scores a flows' map. FE_PRE and FE_CLS are the two flows of Table "
                 "2's run (A_nf_pre: CFlow-AD with CLS-CNFs' 6 coupling blocks on the ImageNet "
                 "encoder; A_nf: the same flows on the classifier-tuned encoder); FE_REG fine-tunes "
                 "the encoder by reconstructing the defect-free image from the synthetic one (MSE). "
                 "Paper image AUROC: 0.9671 / 0.8936 / 0.9708, AUPRO 0.9393 / 0.8305 / 0.9470.",
        ),
        Ablation(
            name="table2",
            title="Table 2: the score maps: A_p, A_nf^PRE, A_nf, A^ns and A = A_nf + w A_p",
            metric="pixel_aupr",
            paper_dataset="MVTec AD mean over 15 categories",
            variants=[
                AblationVariant("A_p", dict(SHARED), 0.5527, map="A_p"),
                AblationVariant("A_nf_pre", dict(SHARED), 0.5771, map="A_nf_pre"),
                AblationVariant("A_nf", dict(SHARED), 0.5841, map="A_nf"),
                AblationVariant("A_ns", dict(SHARED), 0.7127, map="A_ns"),
                AblationVariant("A", dict(SHARED), 0.7209, map="A"),
            ],
            note="All five maps come from ONE run (pre_flows=true also trains CFlow-AD's flows on "
                 "the untouched encoder): A^ns = A_nf^PRE + w A_p does not share the encoder. w is "
                 "the run's, chosen on held-out normals with synthetic defects. Paper pixel AUROC: "
                 "0.9232 / 0.9791 / 0.9828 / 0.9825 / 0.9859.",
        ),
    ),
    tables={  # MVTec AD means over 15 categories, in [0, 1]
        "table1": {
            "FE_PRE": {"image_auroc": 0.9671, "pixel_auroc": 0.9791, "pixel_aupr": 0.5771, "aupro": 0.9393},
            "FE_REG": {"image_auroc": 0.8936, "pixel_auroc": 0.9473, "pixel_aupr": 0.4452, "aupro": 0.8305},
            "FE_CLS": {"image_auroc": 0.9708, "pixel_auroc": 0.9828, "pixel_aupr": 0.5841, "aupro": 0.9470},
        },
        "table2": {
            "A_p": {"image_auroc": 0.9196, "pixel_auroc": 0.9232, "pixel_aupr": 0.5527, "aupro": 0.7339},
            "A_nf_pre": {"image_auroc": 0.9671, "pixel_auroc": 0.9791, "pixel_aupr": 0.5771, "aupro": 0.9393},
            "A_nf": {"image_auroc": 0.9708, "pixel_auroc": 0.9828, "pixel_aupr": 0.5841, "aupro": 0.9470},
            "A_ns": {"image_auroc": 0.9777, "pixel_auroc": 0.9825, "pixel_aupr": 0.7127, "aupro": 0.9502},
            "A": {"image_auroc": 0.9809, "pixel_auroc": 0.9859, "pixel_aupr": 0.7209, "aupro": 0.9569},
        },
        # model size in MB of float parameters, images per second at batch 32 (RTX 3090)
        "table3": {
            "FE": {"model_mb": 268.0},
            "CLS": {"model_mb": 285.0, "fps_batch32": 59.25},
            "FE_CLS-CNFs": {"model_mb": 741.0, "fps_batch32": 40.87},
            "CLS-CNFs-sFE": {"model_mb": 771.0, "fps_batch32": 37.94},
            "CLS-CNFs-nsFE": {"model_mb": 1026.0, "fps_batch32": 35.77},
        },
    },
    budget_notes={  # ClsCnfsConfig.BUDGETS holds the values
        "quick": "A few minutes on 2 cores: 160 training images, 10 decoder-only epochs and 1 "
                 "joint epoch of a light pixel network, one pass of the flows. It shows the "
                 "pipeline, not the paper's numbers.",
        "full": "Every training image; 20 decoder-only and 4 joint epochs (the code: 85 and 15, "
                "about 8 h here), a new synthetic set every 5; three passes of the flows. The "
                "classifier is lighter than the code's and trains faster: one bottleneck per "
                "decoder stage (1, 2, 2, 1), its output block at stride 4 then upsampled, and "
                "Adam at 3e-3 instead of 1e-4. Those three were chosen on held-out normals with "
                "synthetic defects (scripts/cls_cnfs_dev.py, docs/results/cls_cnfs_dev.jsonl): at "
                "1e-4 the CPU budget's few hundred steps leave the classifier near chance.",
    },
)
