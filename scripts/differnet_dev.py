"""DifferNet development protocol: choose settings on TRAINING data only, never on the test split.

    python scripts/differnet_dev.py extract --size 224      # features of the dev split (cached)
    python scripts/differnet_dev.py sweep --size 224        # flows on feature subsets -> dev table

Protocol
- ``train/good`` of MTD is split 80 / 20 with a fixed seed (``DEV_SEED``); the flow sees the 80 %.
- The held-out 20 % are the dev normals. Each gets one synthetic defective copy from
  ``kit.synthetic`` (no test image is touched): a Perlin-shaped DTD patch, a blob
  (blowhole-like) or a line / thin scratch (crack-like), one kind per image in turn, sized in
  pixels of each original image (MTD's originals vary from about 100 to 630 px).
- Dev metrics: AUROC dev-normal vs dev-synthetic (scores = eq. 5 over 1 / 4 / 8 fixed test
  transforms) and the held-out NLL per dimension of the dev normals (lower = better density
  fit, comparable only between flows on the same features).

Features are extracted once per image size with every stage (1-4), every statistic (mean,
max, std) and three scales (S, S/2, S/4), then column subsets select the settings, so one
extraction serves the whole sweep. Results are appended to ``--out`` (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from kit.data import ImageSet, find_category, split_train_val
from kit.methods.differnet import IDENTITY, DifferNet, DifferNetConfig, fixed_test_transforms, train_transform_pool
from kit.flows import Flow, nll, subnet_fc
from kit.paths import SHARED_DATA
from kit.synthetic import DefectGenerator, SyntheticConfig, original_size

DEV_SEED = 100
LAYERS = (1, 2, 3, 4)
STATS = ("mean", "max", "std")
K_TRAIN = 4
ROTATION = "uniform"  # set by --rotation; "none" = brightness/contrast transforms only
N_DEV_T = 8


# ------------------------------------------------------------------------------------------------
# synthetic defects (dev only): kit.synthetic, sizes in pixels of each original MTD image

DEV_KINDS = ("texture", "blob", "line")  # dev image i gets kind i % 3; the per_kind_t8 names


def dev_generators(normals: list[Path], size: int) -> list[DefectGenerator]:
    """One seeded generator per dev kind, drawing content from ``normals`` (the fit images).

    texture: a Perlin-shaped DTD patch (the CLS-CNFs / DRAEM defect); blob: a blowhole-sized
    blob (4-40 px of the original); line: a straight line or a thin scratch (crack-like). The
    source is made gray on these grayscale images (``keep_gray``), and a draw that comes out
    empty is redrawn (``attempts``), so every dev image gets a defect.
    """
    kinds = {"texture": dict(shapes=("perlin",), sources=("dtd",)),
             "blob": dict(shapes=("blob",)),
             "line": dict(shapes=("line", "scratch"))}
    return [DefectGenerator(normals, size, DEV_SEED, texture=True,
                            config=SyntheticConfig(keep_gray=True, attempts=10, **kinds[k]))
            for k in DEV_KINDS]


def dev_defects(dev_samples: list, dev_normal: torch.Tensor, normals: list[Path], size: int) -> torch.Tensor:
    """``[N, 3, S, S]``: one synthetic defective copy of each dev normal, kind ``i % 3``, key ``i``."""
    gens = dev_generators(normals, size)
    out = []
    for i, (sample, image) in enumerate(zip(dev_samples, dev_normal)):
        d = gens[i % len(DEV_KINDS)](image, i, original_size=original_size(sample.path))
        if not d.has_defect:
            raise RuntimeError(f"{sample.path}: no synthetic {DEV_KINDS[i % len(DEV_KINDS)]} defect after "
                               f"{gens[i % len(DEV_KINDS)].config.attempts} draws")
        out.append(d.image)
    return torch.stack(out)


# ------------------------------------------------------------------------------------------------

def dev_method(size: int, backbone: str = "tf_efficientnet_lite0") -> DifferNet:
    cfg = DifferNetConfig(backbone=backbone, image_size=size, scales=(size, size // 2, size // 4), layers=LAYERS,
                          pooling="+".join(STATS), n_train_transforms=K_TRAIN, n_test_transforms=N_DEV_T,
                          rotation=ROTATION, color_jitter=0.15, seed=0)
    return DifferNet(cfg)


def extract(size: int, data_root: Path, out: Path, backbone: str) -> None:
    cat = find_category(data_root, "magnetic_tile")
    fit_s, dev_s = split_train_val(cat.train, 0.2, DEV_SEED)
    m = dev_method(size, backbone)
    t0 = time.perf_counter()
    params = train_transform_pool(len(fit_s), m.config, torch.Generator().manual_seed(0))
    train = m._training_features(ImageSet(fit_s, size), params, progress=True).numpy()
    t_train = time.perf_counter() - t0
    dev_normal = torch.stack([img for img in ImageSet(dev_s, size)])
    dev_defect = dev_defects(dev_s, dev_normal, [s.path for s in fit_s], size)
    tp = fixed_test_transforms(m.config)
    feats = [m.cached_features(dev_normal[i:i + 8], tp).numpy() for i in range(0, len(dev_normal), 8)]
    feats_d = [m.cached_features(dev_defect[i:i + 8], tp).numpy() for i in range(0, len(dev_defect), 8)]
    np.savez(out, train=train, dev_normal=np.concatenate(feats), dev_defect=np.concatenate(feats_d),
             kinds=np.arange(len(dev_defect)) % len(DEV_KINDS), channels=np.array(m.extractor.channels),
             scales=np.array(m.config.scales))
    print(f"extracted size {size}: train {train.shape} in {t_train:.0f} s, total {time.perf_counter() - t0:.0f} s")
    extract_identity(size, data_root, out, backbone)


def extract_identity(size: int, data_root: Path, feats: Path, backbone: str) -> None:
    """Add ``train_identity [N, 1, D]`` (the fit images, untransformed) to an extracted npz:
    the features of a flow trained WITHOUT transforms (Table 3 A/C, ``--k-train 0``)."""
    cat = find_category(data_root, "magnetic_tile")
    fit_s, _ = split_train_val(cat.train, 0.2, DEV_SEED)
    m = dev_method(size, backbone)
    identity = torch.tensor([IDENTITY], dtype=torch.float64).expand(len(fit_s), 1, 3)
    train_identity = m._training_features(ImageSet(fit_s, size), identity, progress=True).numpy()
    data = dict(np.load(feats))
    np.savez(feats, **data, train_identity=train_identity)
    print(f"added train_identity {train_identity.shape} to {feats}")


def columns(channels, n_scales_total, scales, layers, stats) -> np.ndarray:
    """Column indices of a (scales, layers, stats) subset in the dev feature layout."""
    cols, offset = [], 0
    for si in range(n_scales_total):
        for li, c in zip(LAYERS, channels):
            for st in STATS:
                if si in scales and li in layers and st in stats:
                    cols.extend(range(offset, offset + c))
                offset += c
    return np.array(cols)


def train_eval(train, dev_n, dev_d, standardize, hidden, depth, epochs, seed=0, lr=2e-4, batch=64):
    """Fit a flow on ``train [M, D]``; dev AUROC for 1/4/8 test transforms and dev NLL/dim."""
    d = train.shape[1]
    x = torch.from_numpy(train).float()
    mean, std = (x.mean(0), x.std(0).clamp_min(1e-6)) if standardize else (torch.zeros(d), torch.ones(d))
    x = (x - mean) / std
    flow = Flow.build(d, 8, subnet_fc(hidden, depth), clamp=3.0, seed=seed)
    opt = torch.optim.Adam(flow.parameters(), lr=lr, betas=(0.8, 0.8), eps=1e-4, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed)
    curve = []

    def evaluate():
        flow.eval()
        with torch.no_grad():
            out = {}
            s = {}
            for name, f in (("n", dev_n), ("d", dev_d)):
                v = (torch.from_numpy(f).float() - mean) / std  # [V, T, D]
                z, ld = flow(v.reshape(-1, d))
                s[name] = nll(z, ld).view(v.shape[0], v.shape[1]).numpy()
            labels = np.r_[np.zeros(len(s["n"])), np.ones(len(s["d"]))]
            for k in (1, 4, 8):
                idx = np.arange(0, 8, 8 // k)
                out[f"auroc_t{k}"] = roc_auc_score(labels, np.r_[s["n"][:, idx].mean(1), s["d"][:, idx].mean(1)])
            out["dev_nll_per_dim"] = float(s["n"].mean() / d)
            out["_scores"] = s
        flow.train()
        return out

    t0 = time.perf_counter()
    for epoch in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            z, ld = flow(x[idx])
            loss = nll(z, ld).mean() / d
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (epoch + 1) % max(1, epochs // 4) == 0 or epoch + 1 == epochs:
            r = evaluate()
            curve.append((epoch + 1, round(r["auroc_t8"], 4), round(r["dev_nll_per_dim"], 4),
                          round(r["auroc_t1"], 4)))  # (epoch, AUROC 8 T, NLL/dim, AUROC 1 T)
    r = evaluate()
    r["curve"] = curve
    r["seconds"] = round(time.perf_counter() - t0, 1)
    return r


SETTINGS = {
    # name: (scale indices, layers, stats)
    "paper-like: stage4 mean, 3 scales": ((0, 1, 2), (4,), ("mean",)),
    "stage4 mean, 1 scale": ((0,), (4,), ("mean",)),
    "stages3-4 mean, 2 scales": ((0, 1), (3, 4), ("mean",)),
    "stages3-4 mean+max, 2 scales": ((0, 1), (3, 4), ("mean", "max")),
    "stages3-4 mean+std, 2 scales": ((0, 1), (3, 4), ("mean", "std")),
    "stages2-4 mean+max, 2 scales": ((0, 1), (2, 3, 4), ("mean", "max")),
    "stage3 mean+max, 2 scales": ((0, 1), (3,), ("mean", "max")),
    "stages3-4 mean+max, 1 scale": ((0,), (3, 4), ("mean", "max")),
    "stages3-4 mean+max, 3 scales": ((0, 1, 2), (3, 4), ("mean", "max")),
}


def sweep(size: int, feats: Path, out: Path, names: list[str] | None, standardize: list[bool],
          hidden: int, depth: int, epochs: int, k_train: int, backbone: str) -> None:
    data = np.load(feats)
    channels = list(data["channels"])
    for name, (scales, layers, stats) in SETTINGS.items():
        if names and not any(n in name for n in names):
            continue
        cols = columns(channels, 3, scales, layers, stats)
        # k_train 0: no training transforms (the untransformed images); read its "AUROC 1 T"
        pool = data["train_identity"] if k_train == 0 else data["train"][:, :k_train]
        tr = pool[..., cols].reshape(-1, len(cols))
        for std in standardize:
            r = train_eval(tr, data["dev_normal"][..., cols], data["dev_defect"][..., cols], std,
                           hidden, depth, epochs)
            s = r.pop("_scores")
            kinds = data["kinds"]
            per_kind = {}
            for k, kname in enumerate(DEV_KINDS):
                lab = np.r_[np.zeros(len(s["n"])), np.ones((kinds == k).sum())]
                per_kind[kname] = round(roc_auc_score(lab, np.r_[s["n"].mean(1), s["d"][kinds == k].mean(1)]), 4)
            row = {"size": size, "backbone": backbone, "rotation": ROTATION, "setting": name, "dim": len(cols), "standardize": std, "hidden": hidden,
                   "depth": depth, "epochs": epochs, "k_train": k_train, **{k: (round(v, 4) if isinstance(v, float) else v)
                                                                          for k, v in r.items()},
                   "per_kind_t8": per_kind}
            print(json.dumps(row), flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("extract", "extract-identity", "sweep"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--rotation", default="uniform", choices=("uniform", "right", "none"))
    ap.add_argument("--data-root", default=str(SHARED_DATA / "mtd"))
    ap.add_argument("--feats", default=None, help="npz of extracted dev features (default /tmp/differnet_dev_<size>.npz)")
    ap.add_argument("--out", default="artifacts/differnet_dev.jsonl")
    ap.add_argument("--settings", nargs="*", default=None, help="substrings of setting names")
    ap.add_argument("--standardize", nargs="+", type=int, default=[1, 0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--k-train", type=int, default=K_TRAIN, help="training transforms per image; 0 = none")
    args = ap.parse_args()
    torch.set_num_threads(1)
    global ROTATION
    ROTATION = args.rotation
    tag = "" if args.backbone == "tf_efficientnet_lite0" else f"_{args.backbone}"
    tag += "" if args.rotation == "uniform" else f"_rot-{args.rotation}"
    feats = Path(args.feats or f"/tmp/differnet_dev_{args.size}{tag}.npz")
    if args.command == "extract":
        extract(args.size, Path(args.data_root), feats, args.backbone)
    elif args.command == "extract-identity":
        extract_identity(args.size, Path(args.data_root), feats, args.backbone)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        sweep(args.size, feats, Path(args.out), args.settings, [bool(s) for s in args.standardize],
              args.hidden, args.depth, args.epochs, args.k_train, args.backbone)


if __name__ == "__main__":
    main()
