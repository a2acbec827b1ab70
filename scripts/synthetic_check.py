"""Score a fitted run on its own held-out normal images with synthetic defects: the training
distribution, against the test split's real defects.

A method that learns from synthetic defects (NDP-Net, CLS-CNFs) can localise them almost
perfectly and still miss real ones; this script measures that gap without touching the test
split. For a run folder it takes the held-out normals the run recorded (``val_images``), draws
one synthetic defect on each with

- ``own``: the method's own training recipe (``method.generator``) with keys no fit used;
- ``dev``: ``scripts/differnet_dev.py``'s development defects (a gray DTD patch, a
  blowhole-sized blob, a crack-like line or scratch, in turn),

and prints, per map of the run, the pixel AUROC / AUPR / AUPRO on those defects and the image
AUROC of the clean held-out images against their defective copies. One JSON line per run and
recipe, appended to ``--out``.

    .venv/bin/python scripts/synthetic_check.py runs/<run> [--recipes own dev] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from differnet_dev import dev_generators  # noqa: E402

from kit import metrics as M  # noqa: E402
from kit.data import ImageSet, find_category  # noqa: E402
from kit.pipeline import restore_method  # noqa: E402
from kit.runstore import load_run  # noqa: E402
from kit.synthetic import original_size  # noqa: E402

KEY_OFFSET = 2_000_000_011  # synthetic keys no fit draws


def held_out(run) -> tuple[list, list]:
    """``(the run's training samples, its held-out normal samples)``, as the pipeline recorded them."""
    cat = find_category(run.config["data_root"], run.config["category"])
    names = set(run.config["val_images"])
    held = [s for s in cat.train if f"{s.path.parent.name}/{s.path.name}" in names]
    return [s for s in cat.train if s not in held], held


def draw(recipe: str, method, fit: list, samples: list, images: torch.Tensor):
    """``(defective [N, 3, S, S] float, masks bool [N, S, S])``: one defect per held-out image."""
    size = method.config.image_size
    if recipe == "own":
        gen = method.generator(ImageSet(fit, size), method.fit_context(None))
        gens = [gen]
    else:
        gens = dev_generators([s.path for s in fit], size)
    out, masks = [], []
    for i, (s, image) in enumerate(zip(samples, images)):
        d = gens[i % len(gens)](image, KEY_OFFSET + i, original_size=original_size(s.path))
        out.append(d.image)
        masks.append(d.mask > 0)
    return torch.stack(out), torch.stack(masks)


def scored(method, images: torch.Tensor, batch: int) -> dict[str, np.ndarray]:
    """``{map name: [N, S, S]}`` and ``{"__score__" + name: [N]}`` for ``images``."""
    maps: dict[str, list] = {}
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            pred = method.predict(images[start:start + batch])
            named = {"primary": pred.anomaly_maps, **pred.named_maps}
            for name, value in named.items():
                maps.setdefault(name, []).append(value.cpu().numpy())
                score = pred.image_scores if name == "primary" else pred.map_score(name)
                maps.setdefault("__score__" + name, []).append(score.cpu().numpy())
    return {k: np.concatenate(v) for k, v in maps.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--recipes", nargs="*", default=["own", "dev"], choices=["own", "dev"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "synthetic_check.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    run = load_run(args.run)
    method = restore_method(run.path, device="cpu")
    size = method.config.image_size
    fit, samples = held_out(run)
    clean = torch.stack([ImageSet([s], size)[0] for s in samples])
    clean_scores = scored(method, clean, method.config.batch_size)
    for recipe in args.recipes:
        if recipe == "own" and not hasattr(method, "generator"):
            print(f"{run.method} trains on no synthetic defects: no 'own' recipe")
            continue
        t0 = time.perf_counter()
        defective, masks = draw(recipe, method, fit, samples, clean)
        out = scored(method, defective, method.config.batch_size)
        labels = np.r_[np.zeros(len(clean)), np.ones(len(defective))]
        row = {"run": run.name, "method": run.method, "recipe": recipe, "images": len(samples),
               "with_defect": int(masks.flatten(1).any(1).sum()), "maps": {}}
        for name in [k for k in out if not k.startswith("__")]:
            pixel = M.pixel_metrics(out[name], masks.numpy())
            image = M.image_auroc(np.r_[clean_scores["__score__" + name], out["__score__" + name]], labels)
            row["maps"][name] = {"image_auroc": round(float(image), 4),
                                 **{k: (None if v is None else round(float(v), 4)) for k, v in pixel.items()}}
        row["test_split"] = {name: {k: run.metrics.get(k) if name == "primary" else
                                    (run.metrics.get("maps") or {}).get(name, {}).get(k)
                                    for k in ("image_auroc", "pixel_auroc")} for name in row["maps"]}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["load"] = round(os.getloadavg()[0], 2)
        print(f"{run.name} · {recipe} defects on {len(samples)} held-out normals ({row['with_defect']} non-empty)")
        for name, v in row["maps"].items():
            test = row["test_split"][name]
            print(f"  {name:<10} synthetic: image {v['image_auroc']:.3f} pixel {v['pixel_auroc']:.3f} "
                  f"AUPRO {v['aupro']:.3f} · test split: image {test['image_auroc']:.3f} pixel {test['pixel_auroc']:.3f}")
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
