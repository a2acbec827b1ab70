"""Every method's inference against its bare backbone forward, in one process: the result
data of the report's speed table (``docs/results/speed.json``).

For each registered method, the fitted model of its default run in the grid (``python -m kit
bench``: the newest default-settings run of ``--budget`` under ``--runs-root``) is restored on
the CPU; one test image of that run's data, at the run's size, batch 1, ``--threads`` threads:
the median ms of ``method.predict`` (every map the method returns) and of the bare backbone
(``FeatureExtractor`` of the run's backbone through the stages the method reads; all five for a
method without a ``layers`` setting), timed interleaved, and their ratio (issue 13's target:
at most 1.5x). Beside it, the time ``predict`` spends inside backbone forwards (every CNN it
runs, counted as it runs them) and its ratio to that: what the method adds beyond its CNNs;
and ``predict``'s floating-point operations against the bare forward's: the ratio the method
would have if every operation ran as fast as the backbone's.

    .venv/bin/python benchmarks/bench_methods.py [--budget quick] [--repeats 10] [--methods ...]
    .venv/bin/python benchmarks/bench_methods.py --compile   # + predict under torch.compile
    .venv/bin/python benchmarks/bench_methods.py --onnx      # + predict and the bare backbone
                                                             #   as ONNX graphs in ONNX Runtime
    .venv/bin/python benchmarks/bench_methods.py --batches 1 4 8 16  # + ms per image of scoring
                                                             #   16 test images at each batch size
                                                             #   (and of the bare backbone)
    .venv/bin/python benchmarks/bench_methods.py --techniques  # + at 1 thread (method and bare)
                                                             #   and in the other backbone layout
    .venv/bin/python -m kit report --no-collect     # the report's speed table from the file

Run it on a quiet machine; it records the load average before and after each method.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__" and "--compile" in sys.argv and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    # a cold compile: inductor's on-disk cache of earlier runs' generated code would hide its
    # cost. Read when torch is imported, so set before; methods compiled later in this process
    # reuse the kernels of a backbone an earlier one compiled.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="kit-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere in the repo
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_cflow import interleaved  # noqa: E402

from kit.backbones import FeatureExtractor  # noqa: E402
from kit.cache import FeatureCache  # noqa: E402
from kit.data import ImageSet, find_category  # noqa: E402
from kit.method import load_methods  # noqa: E402
from kit.paths import default_runs_root  # noqa: E402
from kit.pipeline import restore_method  # noqa: E402
from kit.report import SPEED_FILE, collect, newest_defaults  # noqa: E402

ALL_STAGES = (0, 1, 2, 3, 4)


def default_runs(runs_root: Path, budget: str) -> dict[str, dict]:
    """``{method: record}``: the newest default-settings run of ``budget`` per method."""
    records = [r for r in collect(runs_root) if r["budget"] == budget and r["data"] != "sample"]
    return newest_defaults(records, key=lambda r: r["method"])


def bare_forward(backbone: str, layers, weights: str):
    """``fn(images [B, 3, S, S] in [0, 1])``: the bare forward of ``backbone`` through the
    deepest of ``layers``, channels-last as every method runs it, so a ratio to it is the
    method's own cost."""
    bare = FeatureExtractor(backbone, layers=(max(layers),), weights=weights,
                            channels_last=True).eval()

    def forward(x):
        with torch.inference_mode():
            bare(x)

    forward.numerics = bare.numerics  # how it ran: ONNX Runtime for a frozen CPU backbone (kit.ort)
    return forward


def compiled_predict(method, image: torch.Tensor, timeout_s: int = 0
                     ) -> tuple[Any, float, float]:
    """``(fn, compile seconds, largest difference)``: ``method.predict`` under
    ``torch.compile`` (inductor, the default), its first call's time (tracing and code
    generation), and the largest absolute difference between compiled and eager output on
    ``image``, each output (map, image scores, every named map) relative to its own largest
    eager value. TimeoutError when the first call takes over ``timeout_s`` seconds (0: no limit;
    the limit needs SIGALRM in the main thread and is ignored elsewhere)."""
    compiled = torch.compile(method.predict)
    limit = (timeout_s > 0 and hasattr(signal, "SIGALRM")
             and threading.current_thread() is threading.main_thread())

    def give_up(signum, frame):
        raise TimeoutError(f"compiling took over {timeout_s} s")

    previous = signal.signal(signal.SIGALRM, give_up) if limit else None
    if limit:
        signal.alarm(timeout_s)
    start = time.perf_counter()
    try:
        fast = compiled(image)
    finally:
        if limit:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    seconds = time.perf_counter() - start
    eager = method.predict(image)
    pairs = [(eager.anomaly_maps, fast.anomaly_maps), (eager.image_scores, fast.image_scores),
             *((eager.named_maps[k], fast.named_maps[k]) for k in eager.named_maps)]
    diff = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) for a, b in pairs)
    return compiled, seconds, diff


def onnx_fns(method, image: torch.Tensor, backbone: str, layers, weights: str, threads: int,
             folder: Path) -> tuple[dict[str, Any], dict]:
    """``({"onnx": fn, "onnx_bare": fn}, facts)``: ``method.predict`` exported by
    :func:`kit.deploy.export_onnx` and the bare backbone of :func:`bare_forward` exported the
    same way, each run by ONNX Runtime with ``threads`` threads, so that the method's own
    overhead is also a ratio inside one runtime. ``facts``: export seconds and the largest
    difference to eager. :class:`kit.deploy.OnnxExportError` where the method does not export."""
    from kit.deploy import OnnxPredictor, export_onnx, max_rel_diff
    from kit.ort import session_options, trace_to_onnx

    start = time.perf_counter()
    predictor = OnnxPredictor(export_onnx(method, folder / "method.onnx", example=image), threads)
    export_s = time.perf_counter() - start
    diff = max_rel_diff(method.predict(image), predictor.predict(image))
    bare = FeatureExtractor(backbone, layers=(max(layers),), weights=weights).eval()
    trace_to_onnx(bare, image, folder / "bare.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "bare.onnx"), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    x = {"images": image.numpy()}
    return ({"onnx": predictor.predict, "onnx_bare": lambda _: session.run(None, x)},
            {"onnx_export_s": round(export_s, 1), "onnx_max_rel_diff": float(f"{diff:.2e}")})


def batch_ms(method, images: torch.Tensor, sizes: list[int], repeats: int, bare=None
             ) -> tuple[dict[str, float], dict[str, float]]:
    """``({batch size: median ms per image}, the same for ``bare``)``, unrounded: ``method.predict`` over
    ``images`` cut into pieces of each size (the way a run scores its test split) and, when
    given, the bare backbone forward ``bare`` over the same pieces, all interleaved per repeat,
    so the method's overhead is also a ratio at each batch size."""
    def scorer(fn, size):
        def score(batch):
            for first in range(0, len(batch), size):
                fn(batch[first:first + size])
        return score

    fns = {("method", size): scorer(method.predict, size) for size in sizes}
    if bare is not None:
        fns.update({("bare", size): scorer(bare, size) for size in sizes})
    # one warm-up pass per size: the allocator and oneDNN's kernels (or graphs) for each shape
    per_call = interleaved(fns, images, repeats, warmups=1)
    medians = {key: statistics.median(ms / len(images) for ms in v) for key, v in per_call.items()}
    return ({str(size): medians[("method", size)] for size in sizes},
            {str(size): medians[("bare", size)] for size in sizes if ("bare", size) in medians})


def thread_counts(predict, bare, image: torch.Tensor, repeats: int, threads: int, other: int
                  ) -> dict[str, list[float]]:
    """Wall ms of ``predict`` and ``bare`` at ``other`` threads (``other_threads``,
    ``other_threads_bare``) and of ``predict`` at ``threads`` (``same_threads``), alternating the
    count every repeat so that a drift of the machine's speed falls on both; after each switch
    every function is called once untimed, since a switch rebuilds the thread pool."""
    wall: dict[str, list[float]] = {"other_threads": [], "other_threads_bare": [], "same_threads": []}
    try:
        for _ in range(repeats):
            for count, fns in ((other, {"other_threads": predict, "other_threads_bare": bare}),
                               (threads, {"same_threads": predict})):
                torch.set_num_threads(count)
                for name, ms in interleaved(fns, image, 1, warmups=1).items():
                    wall[name] += ms
    finally:
        torch.set_num_threads(threads)
    return wall


def flip_layouts(method) -> str:
    """Switch every backbone ``method`` holds to the other memory layout (channels-last to
    PyTorch's default NCHW, or back), weights and the input it makes; returns the layout the
    backbones now have, ``"NCHW"`` or ``"channels-last"``."""
    found = [m for module in method.modules() for m in module.modules()
             if isinstance(m, FeatureExtractor)]
    layouts = {m.channels_last for m in found}
    if len(layouts) != 1:
        raise RuntimeError(f"{method.name}: backbones in {'mixed' if layouts else 'no'} layouts")
    flipped = not layouts.pop()
    for extractor in found:
        extractor.channels_last = flipped
        extractor.body.to(memory_format=torch.channels_last if flipped else torch.contiguous_format)
    cache = getattr(method, "cache", None)  # DifferNet's feature cache: features of its own layout
    if isinstance(cache, FeatureCache) and "memory_format" in cache.spec:
        method.cache = FeatureCache({**cache.spec, "memory_format": "channels_last" if flipped
                                     else "contiguous"}, cache.root, enabled=cache.enabled)
    return "channels-last" if flipped else "NCHW"


def error_line(err: BaseException, width: int = 200) -> str:
    """``Type: message`` in one line: the message's first line, and the next one too where the
    first only introduces it (inductor's "backend='inductor' raised:")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    text = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
    return f"{type(err).__name__}: {text}".rstrip(": ")[:width]


@contextlib.contextmanager
def backbone_clock():
    """While active, every :class:`FeatureExtractor` forward (each backbone a method runs: its
    source CNN, a second CNN, each of DifferNet's views) adds its wall seconds to
    ``clock["s"]`` and one to ``clock["calls"]``. Backward passes through a backbone
    (DifferNet's gradient maps) are the method's own work."""
    clock = {"s": 0.0, "calls": 0}
    original = FeatureExtractor.forward

    def timed_forward(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            clock["s"] += time.perf_counter() - start
            clock["calls"] += 1

    FeatureExtractor.forward = timed_forward
    try:
        yield clock
    finally:
        FeatureExtractor.forward = original


def time_in_backbones(predict, image: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Where ``predict(image)``'s time goes, median over ``repeats`` calls after one warm-up:
    ms inside backbone forwards (:func:`backbone_clock`), forwards per call, and the ratio of
    the whole call to those forwards: the method's overhead over every CNN forward it runs,
    where ``ratio`` compares with one bare forward of its source backbone."""
    predict(image)
    inside, total, calls = [], [], 0
    with backbone_clock() as clock:
        for _ in range(repeats):
            before_s, before_calls = clock["s"], clock["calls"]
            start = time.perf_counter()
            predict(image)
            total.append(1000 * (time.perf_counter() - start))
            inside.append(1000 * (clock["s"] - before_s))
            calls = clock["calls"] - before_calls
    backbones, whole = statistics.median(inside), statistics.median(total)
    return {"backbones_ms": round(backbones, 2), "backbone_forwards": calls,
            "backbones_ratio": round(whole / backbones, 3) if backbones > 0 else None}


def count_flops(predict, image: torch.Tensor) -> dict[str, Any]:
    """``predict(image)``'s floating-point operations, by the formulas of PyTorch's
    FLOP counter (``torch.utils.flop_counter``: matrix products and convolutions, forward and
    any backward; not element-wise work): all of them, and those inside backbone forwards (every
    CNN it runs). Under a dispatch mode the backbones run in PyTorch, not ONNX Runtime, so every
    operation is seen. (``FlopCounterMode`` itself tracks modules with backward hooks that
    ``torch.autograd.grad`` on an input, DifferNet's gradient maps, refuses.)"""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            formula = flop_registry.get(getattr(func, "_overloadpacket", None))  # none: a higher-order op
            if formula is None:  # a composite (linear, conv2d, matmul): count what it becomes
                with self:
                    out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
            out = func(*args, **kwargs)
            if formula is not None:
                self.flops += formula(*args, **kwargs, out_val=out)
            return out

    counter = Counter()
    inside = {"flops": 0}
    original = FeatureExtractor.forward

    def counted_forward(self, *args, **kwargs):
        before = counter.flops
        try:
            return original(self, *args, **kwargs)
        finally:
            inside["flops"] += counter.flops - before

    FeatureExtractor.forward = counted_forward
    try:
        with counter:
            predict(image)
    finally:
        FeatureExtractor.forward = original
    return {"flops": counter.flops, "backbone_flops": inside["flops"]}


def cold(method):
    """``method`` with its feature cache off (DifferNet's, keyed by image content): every timed
    call repeats the same image, which a cache would otherwise serve from the second call on, so
    the time is that of an image the method has not seen."""
    cache = getattr(method, "cache", None)
    if isinstance(cache, FeatureCache):
        cache.enabled = False
    return method


def measure(run_dir: Path, repeats: int, compile_: bool = False, compile_timeout_s: int = 0,
            onnx: bool = False, batches: list[int] | None = None, n_batch_images: int = 16,
            techniques: bool = False) -> dict:
    method = cold(restore_method(run_dir, device="cpu"))
    cfg = method.config
    run_config = json.loads((run_dir / "config.json").read_text())
    cat = find_category(run_config["data_root"], run_config["category"])
    image = ImageSet(cat.test[:1], cfg.image_size).tensor().float() / 255.0
    layers = tuple(getattr(cfg, "layers", None) or ALL_STAGES)
    backbone = bare_forward(cfg.backbone, layers, cfg.weights)
    fns = {"backbone": backbone, "method": method.predict}
    extra = {}
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2  # the thread count the technique columns compare with
    if compile_:
        try:
            fns["compiled"], seconds, diff = compiled_predict(method, image, compile_timeout_s)
            extra = {"compile_s": round(seconds, 1), "compiled_max_rel_diff": float(f"{diff:.2e}")}
        except Exception as err:  # noqa: BLE001 - a method that does not compile is a finding
            extra = {"compile_error": error_line(err)}
        finally:
            torch._dynamo.reset()  # the next method compiles from a clean state, even after a timeout
    if onnx:
        folder = Path(tempfile.mkdtemp(prefix="kit-onnx-"))
        try:
            more, facts = onnx_fns(method, image, cfg.backbone, layers, cfg.weights,
                                   threads, folder)
            fns.update(more)
            extra.update(facts)
        except Exception as err:  # noqa: BLE001 - a method that does not export is a finding
            extra["onnx_error"] = error_line(err)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the sessions hold what they loaded
    if techniques:
        from kit.deploy import max_rel_diff

        flipped = cold(restore_method(run_dir, device="cpu"))
        extra["other_layout"] = flip_layouts(flipped)
        diff = max_rel_diff(method.predict(image), flipped.predict(image))
        extra["other_layout_max_rel_diff"] = float(f"{diff:.2e}")
        fns["other_layout"] = flipped.predict
    try:
        flops, bare_flops = count_flops(method.predict, image), count_flops(backbone, image)["flops"]
        extra.update(gflops=round(flops["flops"] / 1e9, 3),
                     backbone_gflops=round(flops["backbone_flops"] / 1e9, 3),
                     bare_gflops=round(bare_flops / 1e9, 3),
                     flop_ratio=round(flops["flops"] / bare_flops, 3) if bare_flops > 0 else None)
    except Exception as err:  # noqa: BLE001 - a method the counter cannot follow keeps its timings
        extra["flops_error"] = error_line(err)
    load_before = os.getloadavg()[0]
    wall = interleaved(fns, image, repeats)
    extra.update(time_in_backbones(method.predict, image, repeats))
    if techniques:
        wall.update(thread_counts(method.predict, backbone, image, repeats, threads, other))
    med = {k: statistics.median(v) for k, v in wall.items()}
    if "compiled" in med:
        extra.update(compiled_ms=round(med["compiled"], 2),
                     compiled_speedup=round(med["method"] / med["compiled"], 3))
    if batches:
        images = ImageSet(cat.test[:n_batch_images], cfg.image_size).tensor().float() / 255.0
        timings, bare_timings = batch_ms(method, images, sorted(set(batches)),
                                         max(3, repeats // 3), bare=backbone)
        best = min(timings, key=timings.get)
        extra.update(batch_ms={b: round(ms, 2) for b, ms in timings.items()},
                     bare_batch_ms={b: round(ms, 2) for b, ms in bare_timings.items()},
                     batch_size=cfg.batch_size, best_batch=int(best), batch_images=len(images),
                     batch_ratio={b: round(ms / bare_timings[b], 3) for b, ms in timings.items()})
    if "other_layout" in med:
        extra.update(other_layout_ms=round(med["other_layout"], 2),
                     layout_speedup=round(med["other_layout"] / med["method"], 3),
                     other_threads=other, other_threads_ms=round(med["other_threads"], 2),
                     other_threads_bare_ms=round(med["other_threads_bare"], 2),
                     threads_speedup=round(med["other_threads"] / med["same_threads"], 3),
                     other_threads_ratio=round(med["other_threads"] / med["other_threads_bare"], 3))
    if "onnx" in med:
        extra.update(onnx_ms=round(med["onnx"], 2), onnx_bare_ms=round(med["onnx_bare"], 2),
                     onnx_speedup=round(med["method"] / med["onnx"], 3),
                     onnx_ratio=round(med["onnx"] / med["onnx_bare"], 3))
    return {"backbone": cfg.backbone, "image_size": cfg.image_size, "deepest_stage": max(layers),
            "backbone_runtime": backbone.numerics,
            "bare_ms": round(med["backbone"], 2), "method_ms": round(med["method"], 2),
            "ratio": round(med["method"] / med["backbone"], 3), **extra,
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-root", default=None)
    parser.add_argument("--budget", choices=("quick", "full"), default="quick")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--compile", action="store_true",
                        help="also time each method's predict under torch.compile (minutes "
                             "of compiling per method)")
    parser.add_argument("--compile-timeout", type=int, default=300,
                        help="seconds a method's compile may take before it counts as failed")
    parser.add_argument("--onnx", action="store_true",
                        help="also time each method's predict and its bare backbone exported "
                             "to ONNX and run by ONNX Runtime (seconds per method)")
    parser.add_argument("--batches", type=int, nargs="*", default=None, metavar="B",
                        help="also time scoring 16 test images at each of these batch sizes "
                             "(ms per image), beside the method's own batch_size")
    parser.add_argument("--techniques", action="store_true",
                        help="also time each method at the other thread count (1, or 2 with "
                             "--threads 1) beside its bare backbone, and with its backbones in "
                             "the other memory layout (NCHW or channels-last)")
    parser.add_argument("--out", default=str(SPEED_FILE))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    runs = default_runs(default_runs_root(args.runs_root), args.budget)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else []
    rows = []
    for name in args.methods or sorted(load_methods()):
        if name not in runs:
            print(f"{name}: no default {args.budget} run under the runs root; make it with "
                  f"python -m kit bench --methods {name} --budget {args.budget}")
            continue
        row = {"method": name, "budget": args.budget, "run": runs[name]["run"],
               **measure(default_runs_root(args.runs_root) / runs[name]["run"], args.repeats,
                         args.compile, args.compile_timeout, args.onnx, args.batches,
                         techniques=args.techniques),
               "threads": torch.get_num_threads(), "batch": 1, "repeats": args.repeats,
               "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        print(f"{name:<10} {row['backbone']:<24} {row['image_size']:>4} px  bare {row['bare_ms']:8.1f} ms"
              f"  method {row['method_ms']:8.1f} ms  x{row['ratio']:.2f}  (load {row['load_before']:.2f}"
              f" -> {row['load_after']:.2f})"
              + (f"  in {row['backbone_forwards']} backbone forward(s) {row['backbones_ms']:.1f} ms"
                 f" (x{row['backbones_ratio']:.2f})" if row.get("backbones_ratio") else "")
              + (f"  {row['gflops']:.2f} GFLOP, x{row['flop_ratio']:.2f} the bare forward's"
                 if row.get("flop_ratio") else "")
              + (f"  compiled {row['compiled_ms']:.1f} ms (x{row['compiled_speedup']:.2f} faster, "
                 f"{row['compile_s']:.0f} s to compile)" if "compiled_ms" in row else "")
              + (f"  compile failed: {row['compile_error']}" if "compile_error" in row else "")
              + (f"  ONNX Runtime {row['onnx_ms']:.1f} ms (x{row['onnx_speedup']:.2f} faster; bare "
                 f"{row['onnx_bare_ms']:.1f} ms, x{row['onnx_ratio']:.2f})" if "onnx_ms" in row else "")
              + (f"  ONNX failed: {row['onnx_error']}" if "onnx_error" in row else "")
              + (f"  ms/image by batch {row['batch_ms']} (bare {row['bare_batch_ms']}; its "
                 f"batch_size {row['batch_size']})"
                 if "batch_ms" in row else "")
              + (f"  {row['other_threads']} thread(s) {row['other_threads_ms']:.1f} ms (bare "
                 f"{row['other_threads_bare_ms']:.1f}, x{row['other_threads_ratio']:.2f});"
                 f" {row['other_layout']} backbones {row['other_layout_ms']:.1f} ms (its own layout"
                 f" x{row['layout_speedup']:.2f} faster)" if "other_layout_ms" in row else ""))
        rows.append(row)
        # after every method, so an interrupted benchmark keeps what it measured
        measured = {(r["budget"], r["method"]) for r in rows}  # other methods' rows are kept
        kept = [r for r in previous if (r.get("budget"), r.get("method")) not in measured]
        out.write_text(json.dumps(sorted(kept + rows, key=lambda r: (r["budget"], r["method"])),
                                  indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
