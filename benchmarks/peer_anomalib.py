"""Our ``padim`` and ``cflow`` beside anomalib's PaDiM and CFlow, in one process: the same
training images, test images, ImageNet weights, image size, layers and metric code; accuracy
side by side, inference time as ratios (issue 13's peer comparison, issue 10's cflow target).

    .venv/bin/python benchmarks/peer_anomalib.py [--budget quick] [--repeats 10] [--methods padim cflow]
    .venv/bin/python -m kit report --no-collect     # the report's peer table from the file

anomalib is a benchmark dependency (requirements.txt pins it for the test environment); the
``kit`` package never imports it. Our side is the run ``python -m kit bench`` makes for the
method's default settings (made here when missing, reused when complete). anomalib's side is
trained here, on exactly that run's fit images, with anomalib's own Lightning module, its
``training_step`` and its defaults, under a plain Lightning ``Trainer`` for one epoch.

What anomalib needs offline, done here and written into every result row (``workarounds``):

- weights: the models are built with ``pre_trained=False``, then the same offline Lite0 file
  kit reads is loaded strictly into anomalib's timm extractor (the classifier head, which
  ``features_only`` drops, is the only part left out). ``HF_HUB_OFFLINE=1`` and a blocked timm
  pretrained loader make a silent download fail loudly. Before training, both extractors
  encode one test image and must agree to 1e-5, so "same weights, same layers" is checked;
- input: the images kit reads (same resize), normalised as the Lite weights want,
  (x - 0.5) / 0.5; anomalib's PreProcessor is off;
- metrics: anomalib's raw maps and image scores go through ``kit.metrics`` with the same masks
  and the same images left out. Its own torchmetrics path would apply a sigmoid to raw scores
  (see ../shared/notes/reference-facts.md);
- no validation split: nothing of anomalib's is chosen on the test images.

Fit seconds: anomalib's are ``Trainer.fit`` alone (its images already decoded); ours are the
run's own ``fit_seconds`` (decoding included), measured here when the run was made here, else
when it was made (the row names the run). anomalib scores the test images in batches of ``--eval-batch`` (32, its datamodules' default)
in the test set's order. Its CFlow map subtracts the maximum over the batch, so one image's map
depends on its batch mates; ours does not (``kit/cnf.py``). Run it on a quiet machine: the
load average is recorded before and after the timings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anomalib/timm import huggingface_hub

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere in the repo
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_cflow import interleaved  # noqa: E402
from bench_methods import bare_forward  # noqa: E402

from kit.backbones import FeatureExtractor  # noqa: E402
from kit.compare import default_runs  # noqa: E402
from kit.data import ImageSet, find_category  # noqa: E402
from kit.paths import DEFAULT_CATEGORY, cache_dir, default_data_root, default_runs_root  # noqa: E402
from kit.pipeline import Scored, evaluate_scored, progress_bar, restore_method  # noqa: E402
from kit.report import METRICS, PEER_FILE, data_label  # noqa: E402
from kit.weights import load_offline_state_dict  # noqa: E402

LITE_MEAN = LITE_STD = 0.5  # the Lite weights' normalisation (reference facts)
# both extractors on the same image: the largest |difference| allowed, relative to the largest
# value. Ours runs in ONNX Runtime (kit/ort.py), theirs in PyTorch: they agree to float rounding
# (a few 1e-6); other weights or normalisation differ by order 1
FEATURE_TOLERANCE = 1e-4

WORKAROUNDS = (
    "weights: built with pre_trained=False, then kit's offline Lite weights loaded strictly into "
    "anomalib's timm extractor (head left out); HF_HUB_OFFLINE=1, timm's pretrained loader blocked; "
    "both extractors checked equal on one test image",
    "input: kit's resized images, (x - 0.5) / 0.5; anomalib's PreProcessor off",
    "metrics: anomalib's raw maps and scores scored by kit.metrics (its torchmetrics path would "
    "apply a sigmoid to raw scores)",
    "no validation split; one epoch of anomalib's own training_step under a plain Lightning Trainer",
)


@dataclass(frozen=True)
class Peer:
    """How anomalib's counterpart of one of our methods is built."""

    cls_name: str  # anomalib.models.<cls_name>
    layers: tuple[str, ...]  # anomalib's layer names for Lite0 (reference facts)
    settings: dict[str, Any]  # constructor arguments beyond anomalib's defaults

    def build(self, backbone: str):
        import anomalib.models

        cls = getattr(anomalib.models, self.cls_name)
        return cls(backbone=backbone, layers=list(self.layers), pre_trained=False,
                   pre_processor=False, post_processor=False, evaluator=False, visualizer=False,
                   **self.settings)


# Our stage indices (kit.backbones) and anomalib's block names name the same Lite0 maps:
# PaDiM strides 4/8/16, CFlow 8/16/32. The feature check below fails if they ever differ.
PEERS: dict[str, Peer] = {
    "padim": Peer("Padim", ("blocks.1", "blocks.2", "blocks.4"), {"n_features": 100}),
    "cflow": Peer("Cflow", ("blocks.2", "blocks.4", "blocks.6"), {}),
}


@contextlib.contextmanager
def hub_downloads_blocked():
    """Inside: any pretrained-weight download in timm raises instead of trying the network."""
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise RuntimeError("peer_anomalib: a pretrained download was attempted; this script "
                           "loads kit's offline weights instead")

    original, builder.load_pretrained = builder.load_pretrained, refuse
    try:
        yield
    finally:
        builder.load_pretrained = original


def timm_extractor(module) -> torch.nn.Module:
    """The timm ``features_only`` network inside an anomalib Lightning module."""
    inner = module.model
    wrapper = getattr(inner, "encoder", None) or getattr(inner, "feature_extractor")
    return wrapper.feature_extractor


def load_kit_weights(module, backbone: str) -> list[str]:
    """Load kit's offline weights for ``backbone`` into ``module``'s extractor, strictly.
    Returns the weight names left out (the classifier head that ``features_only`` drops)."""
    net = timm_extractor(module)
    state = load_offline_state_dict(backbone)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise RuntimeError(f"anomalib's {backbone} extractor has weights the offline file lacks: "
                           f"{missing[:5]}")
    net.load_state_dict({k: state[k] for k in own}, strict=True)
    return sorted(set(state) - set(own))


def normalise(images01: torch.Tensor) -> torch.Tensor:
    return (images01 - LITE_MEAN) / LITE_STD


def check_same_features(module, ours: FeatureExtractor, image01: torch.Tensor) -> float:
    """Max |difference| of the two extractors' maps on ``image01 [1, 3, S, S]``, relative to
    the largest value of their maps; raises above
    :data:`FEATURE_TOLERANCE` (other weights, other layers or other normalisation)."""
    with torch.inference_mode():
        theirs = timm_extractor(module)(normalise(image01))
        mine = ours(image01)
    if len(theirs) != len(mine) or any(a.shape != b.shape for a, b in zip(theirs, mine)):
        raise RuntimeError(f"anomalib's maps {[tuple(a.shape) for a in theirs]} are not ours "
                           f"{[tuple(b.shape) for b in mine]}: the layers differ")
    worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
                for a, b in zip(theirs, mine))
    if worst > FEATURE_TOLERANCE:
        raise RuntimeError(f"anomalib's features differ from ours by {worst:.3g}: not the same "
                           "weights or normalisation")
    return worst


def fit_peer(module, images: torch.Tensor, batch_size: int, seed: int, progress: bool) -> float:
    """One epoch of anomalib's own ``training_step`` on uint8 ``images [N, 3, S, S]``, shuffled
    batches as its datamodules make them. Returns the wall seconds of ``Trainer.fit``."""
    from anomalib.data import ImageBatch
    from lightning.pytorch import Trainer, seed_everything

    seed_everything(seed, verbose=False)
    loader = torch.utils.data.DataLoader(
        range(len(images)), batch_size=batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=lambda idx: ImageBatch(image=normalise(images[idx].float() / 255.0)))
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_model_summary=False,
                      enable_progress_bar=progress, num_sanity_val_steps=0, limit_val_batches=0,
                      default_root_dir=str(cache_dir() / "peer_lightning"))
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return time.perf_counter() - start


def score_peer(module, test: ImageSet, batch_size: int, progress: bool) -> Scored:
    """anomalib's image scores ``[N]`` and maps ``[N, S, S]`` of the test images, in batches
    of ``batch_size`` in the test set's order."""
    model = module.model.eval()
    scores, maps = [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in test.batches(batch_size, progress, desc="anomalib: scoring test"):
            out = model(normalise(batch))
            scores.append(out.pred_score.reshape(-1).float().numpy())
            maps.append(out.anomaly_map.reshape(len(batch), *batch.shape[-2:]).float().numpy())
    return Scored(np.concatenate(scores), np.concatenate(maps), time.perf_counter() - start)


def side(metrics: dict[str, Any], fit_seconds: float, ms: float, **extra) -> dict[str, Any]:
    return {**{k: None if metrics.get(k) is None else round(float(metrics[k]), 4) for k in METRICS},
            "fit_seconds": round(fit_seconds, 1), "ms": round(ms, 2), **extra}


def compare_method(name: str, run, repeats: int, eval_batch: int, progress: bool) -> dict[str, Any]:
    """One result row: our run ``run`` against anomalib's model of ``name`` trained here."""
    import anomalib

    peer = PEERS[name]
    cfg = run.config["method_config"]
    size, backbone, seed = cfg["image_size"], cfg["backbone"], run.config["seed"]
    cat = find_category(run.config["data_root"], run.config["category"])
    by_name = {s.name: s for s in cat.train}
    fit_samples = [by_name[n] for n in run.config["fit_images"]]
    test = ImageSet(cat.test, size)
    first = ImageSet(cat.test[:1], size).tensor().float() / 255.0

    torch.manual_seed(seed)
    module = peer.build(backbone)
    left_out = load_kit_weights(module, backbone)
    ours_extractor = FeatureExtractor(backbone, tuple(cfg["layers"]), cfg["weights"]).eval()
    difference = check_same_features(module, ours_extractor, first)

    fit_seconds = fit_peer(module, ImageSet(fit_samples, size).tensor(progress), 32, seed, progress)
    scored = score_peer(module, test, eval_batch, progress)
    peer_metrics = evaluate_scored(cat.test, scored, size, None, cat.has_masks)

    method = restore_method(run.path, device="cpu")
    bare = bare_forward(backbone, cfg["layers"], cfg["weights"])
    model = module.model.eval()

    def peer_forward(x):
        with torch.inference_mode():
            model(normalise(x))

    load_before = os.getloadavg()[0]
    wall = interleaved({"bare": bare, "ours": method.predict, "peer": peer_forward},
                       first, repeats)
    med = {k: statistics.median(v) for k, v in wall.items()}
    return {
        "method": name, "peer": f"anomalib.models.{peer.cls_name}", "anomalib": anomalib.__version__,
        "data": data_label(run.config["data_root"]), "category": run.config["category"],
        "fingerprint": (run.config.get("dataset") or {}).get("fingerprint"),
        "budget": run.config["budget"], "seed": seed, "backbone": backbone, "image_size": size,
        "n_fit": len(fit_samples), "n_test": len(cat.test),
        "ours": side(run.metrics, run.metrics["fit_seconds"], med["ours"], run=run.name,
                     layers=list(cfg["layers"])),
        "anomalib_side": side(peer_metrics, fit_seconds, med["peer"], layers=list(peer.layers),
                              settings={**peer.settings, "epochs": 1, "train_batch": 32,
                                        "eval_batch": eval_batch}),
        "bare_ms": round(med["bare"], 2), "speedup": round(med["peer"] / med["ours"], 3),
        "feature_difference": difference, "weights_left_out": left_out,
        "workarounds": list(WORKAROUNDS), "threads": torch.get_num_threads(), "batch": 1,
        "repeats": repeats, "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2), "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def row_key(row: dict[str, Any]) -> tuple:
    return (row["method"], row["data"], row["category"], row["budget"], row["image_size"])


def write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    """Merge ``rows`` into ``out``: a measured row replaces the one with its key, others stay."""
    previous = json.loads(out.read_text()) if out.exists() else []
    keys = {row_key(r) for r in rows}
    kept = [r for r in previous if row_key(r) not in keys]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(sorted(kept + rows, key=row_key), indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None, extra_overrides: dict[str, dict] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="default: ../shared/data/mtd when there")
    parser.add_argument("--category", default=DEFAULT_CATEGORY)
    parser.add_argument("--runs-root", default=None, help="where our runs are (default: runs/)")
    parser.add_argument("--budget", choices=("quick", "full"), default="quick")
    parser.add_argument("--methods", nargs="*", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--out", default=str(PEER_FILE))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    progress = not args.no_progress

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    runs = default_runs(default_runs_root(args.runs_root), default_data_root(args.data_root),
                        args.category, args.budget, methods=args.methods, progress=progress,
                        extra_overrides=extra_overrides)
    rows = []
    for run in progress_bar(runs, "peer comparison", progress):
        name = run.method
        with hub_downloads_blocked(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            row = compare_method(name, run, args.repeats, args.eval_batch, progress)
        o, p = row["ours"], row["anomalib_side"]
        print(f"{name:<6} ours {o['image_auroc']} / {o['pixel_auroc']} / {o['aupro']}  "
              f"anomalib {p['image_auroc']} / {p['pixel_auroc']} / {p['aupro']}  (image AUROC / "
              f"pixel AUROC / AUPRO)\n       fit s ours {o['fit_seconds']} anomalib {p['fit_seconds']}"
              f"   ms/image bare {row['bare_ms']:.1f} ours {o['ms']:.1f} anomalib {p['ms']:.1f}"
              f"  (anomalib / ours x{row['speedup']:.2f}, load {row['load_before']:.2f} -> "
              f"{row['load_after']:.2f})")
        rows.append(row)
    write_rows(Path(args.out), rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
