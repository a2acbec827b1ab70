"""CFlow-AD's and CLS-CNFs' inference against the bare encoder forward, in one process.

Default: at 256x256, batch 1, 2 CPU threads, the median ms of the bare ``FeatureExtractor``
(Lite0 to the stride-32 stage, as both methods run it) and of ``cflow``'s predict, timed
interleaved, and their ratio (issue 10's target: cflow at most 80 ms per image).

``--table3`` adds CLS-CNFs' Table 3: the model size (MB of float32 parameters, as the paper
counts it) and images per second at batch 32 (the paper's) and batch 1 of

- FE: the encoder alone; CLS: encoder + decoder (A_p); FE_CLS-CNFs: encoder + flows (A_nf);
- CLS-CNFs-sFE: the method (A = A_nf + w A_p, one shared encoder);
- CLS-CNFs-nsFE: A_p's encoder + decoder and a second, untouched encoder + flows (A^ns),

and writes them to ``docs/results/cls_cnfs_table3.json`` (``--out`` elsewhere).

Timing needs no training: the cost of a forward pass does not depend on what the weights
learned, so the flows' normalisers are set to 0 instead of fitted.

    .venv/bin/python benchmarks/bench_cflow.py [--repeats 30] [--threads 2] [--table3]

Run it on a quiet machine; it prints the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere in the repo
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_padim import timed  # noqa: E402

from kit.data import ImageSet, find_category  # noqa: E402
from kit.method import make_method  # noqa: E402
from kit.paths import DEFAULT_CATEGORY, SAMPLE_ROOT  # noqa: E402


def ready(name: str, size: int):
    """The method with its normalisers set (no training: see the module docstring)."""
    method = make_method(name, "full", image_size=size, device="cpu")
    method.cnf.u.zero_()
    method.cnf.n_max.zero_()
    if name == "cls_cnfs":
        method.weight = 0.5
        method.extractor_pre = make_method("cflow", "full", image_size=size).extractor
        method.cnf_pre = method.cnf
    return method


def mb(*modules: torch.nn.Module) -> float:
    return round(sum(p.numel() for m in modules for p in m.parameters()) * 4 / 2**20, 2)


def interleaved(fns: dict, images: torch.Tensor, repeats: int,
                warmups: int = 2) -> dict[str, list[float]]:
    """Wall ms per call of each function, calls interleaved (order rotated every repeat),
    after ``warmups`` untimed calls each."""
    for fn in fns.values():  # warm-up: allocator, kernel selection, cached tables
        for _ in range(warmups):
            fn(images)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            wall[name].append(timed(fns[name], images)[0])
    return wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(SAMPLE_ROOT))
    parser.add_argument("--category", default=DEFAULT_CATEGORY)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table3", action="store_true", help="also CLS-CNFs' Table 3")
    parser.add_argument("--out", default=str(ROOT / "docs/results/cls_cnfs_table3.json"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    cat = find_category(args.data_root, args.category)
    cflow = ready("cflow", args.size)
    one = ImageSet(cat.test[:1], args.size).tensor().float() / 255.0

    def backbone(x):
        with torch.inference_mode():
            cflow.extractor(x)

    wall = interleaved({"backbone": backbone, "cflow": cflow.predict}, one, args.repeats)
    med = {k: statistics.median(v) for k, v in wall.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, "
          f"{args.size}x{args.size}, {cflow.config.backbone} layers {cflow.config.layers}, "
          f"{cflow.config.n_blocks} coupling blocks, {args.repeats} interleaved repeats")
    print(f"{'':<10}{'median ms':>11}{'best ms':>10}")
    for name in ("backbone", "cflow"):
        print(f"{name:<10}{med[name]:>11.1f}{min(wall[name]):>10.1f}")
    print(f"ratio cflow/backbone: {med['cflow'] / med['backbone']:.2f} (median); "
          f"cflow {med['cflow']:.1f} ms per image (target: at most 80)")
    result = {"cflow_batch1": {"backbone_ms": round(med["backbone"], 2),
                               "cflow_ms": round(med["cflow"], 2),
                               "ratio": round(med["cflow"] / med["backbone"], 3)}}
    if args.table3:
        result["table3"] = table3(args, cat)
    load_after = os.getloadavg()
    print(f"load average before {tuple(round(x, 2) for x in load_before)}, "
          f"after {tuple(round(x, 2) for x in load_after)}")
    if args.table3:
        result.update(load_before=load_before, load_after=load_after, threads=args.threads,
                      size=args.size, torch=torch.__version__,
                      created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


def table3(args, cat) -> list[dict]:
    m = ready("cls_cnfs", args.size)
    s = args.size

    @torch.inference_mode()
    def fe(x):
        m.extractor(x)

    @torch.inference_mode()
    def cls(x):
        torch.sigmoid(m.decoder(m.extractor(x), s))

    @torch.inference_mode()
    def fe_cnfs(x):
        m.cnf.anomaly_map(m.extractor(x), s)

    @torch.inference_mode()
    def ns(x):
        a_p = torch.sigmoid(m.decoder(m.extractor(x), s))[:, 0]
        m.cnf_pre.anomaly_map(m.extractor_pre(x), s) + m.weight * a_p

    def sfe(x):
        m.cnf_pre, keep = None, m.cnf_pre  # the method itself: one encoder, A_p + A_nf
        try:
            m.predict(x)
        finally:
            m.cnf_pre = keep

    fns = {"FE": fe, "CLS": cls, "FE_CLS-CNFs": fe_cnfs, "CLS-CNFs-sFE": sfe, "CLS-CNFs-nsFE": ns}
    sizes = {"FE": mb(m.extractor), "CLS": mb(m.extractor, m.decoder),
             "FE_CLS-CNFs": mb(m.extractor, m.cnf), "CLS-CNFs-sFE": mb(m.extractor, m.decoder, m.cnf),
             "CLS-CNFs-nsFE": mb(m.extractor, m.decoder, m.extractor_pre, m.cnf_pre)}
    rows = {k: {"model_mb": v} for k, v in sizes.items()}
    for batch, repeats in ((32, max(3, args.repeats // 10)), (1, args.repeats)):
        images = (ImageSet(cat.test[:batch], s).tensor().float() / 255.0)
        if len(images) < batch:
            images = images.repeat(-(-batch // len(images)), 1, 1, 1)[:batch]
        wall = interleaved(fns, images, repeats)
        for name, ms in wall.items():
            rows[name][f"fps_batch{batch}"] = round(1000 * batch / statistics.median(ms), 2)
    print(f"\nCLS-CNFs Table 3 ({m.config.backbone}, {s} px, {args.threads} threads)")
    print(f"{'network':<16}{'MB':>8}{'img/s b32':>11}{'img/s b1':>10}")
    for name, row in rows.items():
        print(f"{name:<16}{row['model_mb']:>8.1f}{row['fps_batch32']:>11.2f}{row['fps_batch1']:>10.2f}")
    return [{"network": k, **v} for k, v in rows.items()]


if __name__ == "__main__":
    main()
