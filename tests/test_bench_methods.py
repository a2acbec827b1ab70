"""benchmarks/bench_methods.py: the method-vs-backbone timing and its torch.compile variant."""

from __future__ import annotations

import sys

import pytest

from fixtures_runs import tiny_overrides
from kit import report
from kit.backbones import FeatureExtractor
from kit.method import load_methods, make_method
from kit.paths import REPO_ROOT
from kit.pipeline import restore_method, run_experiment

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import bench_methods  # noqa: E402


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from conftest import make_toy_dataset

    root = tmp_path_factory.mktemp("bench")
    data = make_toy_dataset(root / "data")
    return run_experiment("padim", data, "toy", root / "runs" / "padim-default-quick-s0",
                          overrides=tiny_overrides("padim"), progress=False)


def test_compiled_predict_matches_eager_and_is_timed_beside_it(toy_run):
    row = bench_methods.measure(toy_run, repeats=2, compile_=True)
    assert "compile_error" not in row, row.get("compile_error")
    # the compiled predict gives the eager maps and scores (float32 reassociation aside)
    assert row["compiled_max_rel_diff"] < 1e-4
    assert row["compile_s"] > 0 and row["compiled_ms"] > 0
    assert row["compiled_speedup"] == pytest.approx(row["method_ms"] / row["compiled_ms"], rel=0.01)
    assert row["ratio"] == pytest.approx(row["method_ms"] / row["bare_ms"], rel=0.01)
    plain = bench_methods.measure(toy_run, repeats=2)
    assert "compiled_ms" not in plain
    rows = [{**row, "method": "padim", "budget": "quick", "threads": 2, "created": "2026-12-06"},
            {**plain, "method": "cflow", "budget": "quick", "threads": 2, "created": "2026-12-06"}]
    text = report.speed_markdown(rows)
    assert "torch.compile ms" in text.splitlines()[0]
    padim_line = next(line for line in text.splitlines() if line.startswith("| `padim`"))
    assert f"(x{row['compiled_speedup']:.2f};" in padim_line
    saved = row["method_ms"] - row["compiled_ms"]
    payback = f"{1000 * row['compile_s'] / saved:.0f}" if saved > 0 else "never"
    assert f" s; {payback}; " in padim_line  # images until the compile time is paid back
    assert next(line for line in text.splitlines() if line.startswith("| `cflow`")).endswith(" - |")
    assert "torch.compile" not in report.speed_markdown(rows[1:])


def test_a_method_that_does_not_compile_is_reported_not_fatal(toy_run, monkeypatch):
    def refuse(fn):
        def call(*args):
            raise RuntimeError("unsupported operator\nand a long trace")
        return call

    monkeypatch.setattr(bench_methods.torch, "compile", refuse)
    row = bench_methods.measure(toy_run, repeats=1, compile_=True)
    assert row["compile_error"] == "RuntimeError: unsupported operator"
    assert "compiled_ms" not in row and row["method_ms"] > 0  # the eager timing still stands
    text = report.speed_markdown([{**row, "method": "padim", "budget": "quick", "threads": 2,
                                   "created": "2026-12-06"}])
    assert text.splitlines()[-1].endswith(" failed: RuntimeError: unsupported operator |")


def test_error_lines_say_what_failed_in_one_line():
    assert bench_methods.error_line(RuntimeError("bad op\ntrace")) == "RuntimeError: bad op"
    assert bench_methods.error_line(ValueError()) == "ValueError"  # no message: the type alone
    inductor = RuntimeError("backend='inductor' raised:\nNotImplementedError: aten.foo\n  at x")
    assert bench_methods.error_line(inductor) == (
        "RuntimeError: backend='inductor' raised: NotImplementedError: aten.foo")


def test_onnx_runtime_is_timed_beside_eager_with_its_own_bare_backbone(toy_run, monkeypatch):
    row = bench_methods.measure(toy_run, repeats=2, onnx=True)
    assert "onnx_error" not in row, row.get("onnx_error")
    assert row["onnx_max_rel_diff"] < 1e-4 and row["onnx_export_s"] > 0
    assert row["onnx_speedup"] == pytest.approx(row["method_ms"] / row["onnx_ms"], rel=0.01)
    assert row["onnx_ratio"] == pytest.approx(row["onnx_ms"] / row["onnx_bare_ms"], rel=0.01)
    text = report.speed_markdown([{**row, "method": "padim", "budget": "quick", "threads": 2,
                                   "created": "2026-12-06"}])
    assert "ONNX Runtime ms" in text.splitlines()[0] and "torch.compile" not in text
    assert text.splitlines()[-1].endswith(
        f"{row['onnx_ms']:.1f} (x{row['onnx_speedup']:.2f}; {row['onnx_bare_ms']:.1f}, "
        f"x{row['onnx_ratio']:.2f}; {row['onnx_max_rel_diff']:.0e}) |")

    def refuse(*args, **kwargs):
        raise bench_methods.torch.onnx.errors.UnsupportedOperatorError("aten::foo\ntrace")

    monkeypatch.setattr(bench_methods.torch.onnx, "export", refuse)
    failed = bench_methods.measure(toy_run, repeats=1, onnx=True)
    assert failed["onnx_error"].startswith("OnnxExportError: Padim does not export to ONNX")
    assert "onnx_ms" not in failed and failed["method_ms"] > 0


def test_scoring_is_timed_at_each_batch_size_beside_the_methods_own(toy_run):
    row = bench_methods.measure(toy_run, repeats=3, batches=[4, 1, 4], n_batch_images=5)
    assert list(row["batch_ms"]) == ["1", "4"] and all(v > 0 for v in row["batch_ms"].values())
    assert row["batch_images"] == 5 and row["best_batch"] in (1, 4)
    assert row["best_batch"] == int(min(row["batch_ms"], key=row["batch_ms"].get))
    # the bare backbone over the same pieces, and the method's ratio to it at each size
    assert list(row["bare_batch_ms"]) == ["1", "4"] and all(v > 0 for v in row["bare_batch_ms"].values())
    assert set(row["batch_ratio"]) == {"1", "4"}
    for b, ratio in row["batch_ratio"].items():  # from the unrounded medians
        assert abs(ratio - row["batch_ms"][b] / row["bare_batch_ms"][b]) <= 0.01 * ratio + 0.01
    text = report.speed_markdown([{**row, "batch_size": 4, "method": "padim", "budget": "quick",
                                   "threads": 2, "created": "2026-12-06"}])
    assert "by batch size" in text.splitlines()[0]
    assert text.splitlines()[-1].endswith(
        f"1: {row['batch_ms']['1']:.1f} (x{row['batch_ratio']['1']:.2f}), "
        f"**4: {row['batch_ms']['4']:.1f} (x{row['batch_ratio']['4']:.2f})** |")
    # sizes in numeric order, though speed.json sorts its keys as text ("16" before "4"); rows
    # measured before the bare backbone was timed per size show no ratio
    stored = {**row, "batch_ms": {"1": 3.0, "16": 1.0, "4": 2.0}, "batch_size": 4,
              "method": "padim", "budget": "quick", "threads": 2, "created": "2026-12-06"}
    del stored["batch_ratio"]
    older = report.speed_markdown([stored])
    assert older.endswith("1: 3.0, **4: 2.0**, 16: 1.0 |")
    assert "ratio to the bare backbone" not in older.splitlines()[0]


def test_thread_count_and_memory_layout_are_timed_beside_the_table(toy_run):
    threads = bench_methods.torch.get_num_threads()
    own_layout = restore_method(toy_run, device="cpu").extractor.channels_last
    row = bench_methods.measure(toy_run, repeats=2, techniques=True)
    assert bench_methods.torch.get_num_threads() == threads  # put back after every timed call
    assert row["other_threads"] == (1 if threads > 1 else 2)
    assert row["other_threads_ms"] > 0 and row["other_threads_bare_ms"] > 0
    assert row["threads_speedup"] > 0  # against the same predict timed alternately with it
    assert row["other_threads_ratio"] == pytest.approx(
        row["other_threads_ms"] / row["other_threads_bare_ms"], rel=0.01)
    assert row["other_layout"] == ("NCHW" if own_layout else "channels-last")
    assert row["other_layout_max_rel_diff"] < 1e-4  # a layout changes float rounding only
    assert row["layout_speedup"] == pytest.approx(row["other_layout_ms"] / row["method_ms"], rel=0.01)
    text = report.speed_markdown([{**row, "method": "padim", "budget": "quick", "threads": threads,
                                   "created": "2026-12-06"}])
    assert "other memory layout" in text.splitlines()[0]
    assert text.splitlines()[-1].endswith(
        f"{row['other_layout']}, {row['other_layout_ms']:.1f} (x{row['layout_speedup']:.2f}; "
        f"{row['other_layout_max_rel_diff']:.0e}) |")
    assert "other memory layout" not in report.speed_markdown(
        [{k: v for k, v in row.items() if not k.startswith("other")} | {
            "method": "padim", "budget": "quick", "threads": threads, "created": "2026-12-06"}])


@pytest.mark.parametrize("name", sorted(load_methods()))
def test_every_methods_backbones_flip_layout_together(name):
    method = make_method(name, "quick", **tiny_overrides(name))
    first = bench_methods.flip_layouts(method)
    assert bench_methods.flip_layouts(method) != first
    extractors = [m for module in method.modules() for m in module.modules()
                  if isinstance(m, FeatureExtractor)]
    assert extractors and {m.channels_last for m in extractors} == {first == "NCHW"}
    layout = bench_methods.torch.channels_last if first == "NCHW" else bench_methods.torch.contiguous_format
    kernels = [p for m in extractors for p in m.body.parameters() if p.dim() == 4]
    assert kernels and all(p.is_contiguous(memory_format=layout) for p in kernels)
    cache = getattr(method, "cache", None)  # a feature cache keyed by the layout follows it
    if cache is not None and "memory_format" in cache.spec:
        assert cache.spec["memory_format"] == ("channels_last" if first == "NCHW" else "contiguous")
    assert bench_methods.cold(method) is method  # timed as for an image it has not seen
    assert getattr(method, "cache", None) is None or not method.cache.enabled


def test_thread_counts_alternate_and_put_the_count_back():
    threads = bench_methods.torch.get_num_threads()
    seen = []

    def predict(x):
        seen.append(bench_methods.torch.get_num_threads())

    wall = bench_methods.thread_counts(predict, lambda x: None, None, 3, threads, threads + 1)
    assert {k: len(v) for k, v in wall.items()} == {"other_threads": 3, "other_threads_bare": 3,
                                                     "same_threads": 3}
    # per repeat: a warm-up and a timed call at the other count, then the same at the table's
    assert seen == [threads + 1] * 2 + [threads] * 2 + [threads + 1] * 2 + [threads] * 2 \
        + [threads + 1] * 2 + [threads] * 2
    assert bench_methods.torch.get_num_threads() == threads


def test_time_inside_backbone_forwards_counts_every_cnn_a_method_runs():
    """Two backbone forwards per call and work outside them: the forwards and their time are
    the method's CNNs, the rest its own overhead."""
    import time

    source = FeatureExtractor("tf_efficientnet_lite0", (1,), "none").eval()
    second = FeatureExtractor("tf_efficientnet_lite0", (2,), "none").eval()

    def predict(x):
        with bench_methods.torch.inference_mode():
            source(x)
            second(x)
        time.sleep(0.02)  # the method's own work, outside every forward

    row = bench_methods.time_in_backbones(predict, bench_methods.torch.rand(1, 3, 64, 64), 3)
    assert row["backbone_forwards"] == 2 and row["backbones_ms"] > 0
    assert row["backbones_ratio"] > 1 + 0.9 * 20 / row["backbones_ms"]  # the 20 ms outside
    assert "timed_forward" not in FeatureExtractor.forward.__qualname__  # put back after


def test_flops_are_counted_inside_and_outside_backbone_forwards_backward_included():
    """A backbone forward, then 64 x 256 x 256 multiply-adds of the method's own and their
    backward to the input (as DifferNet's gradient maps): each counted once, where it ran,
    exactly as PyTorch's FLOP formulas count them, and the backbone counted in PyTorch."""
    torch = bench_methods.torch
    source = FeatureExtractor("tf_efficientnet_lite0", (1,), "none").eval()
    weight = torch.rand(256, 256)
    image = torch.rand(1, 3, 64, 64)

    def predict(x):
        with torch.inference_mode():
            source(x)
        h = torch.rand(64, 256, requires_grad=True)
        (grad,) = torch.autograd.grad((h @ weight).sum(), h)
        return grad

    counted = bench_methods.count_flops(predict, image)
    bare = bench_methods.count_flops(lambda x: source(x), image)
    own = 2 * 64 * 256 * 256
    assert bare["flops"] == bare["backbone_flops"] > 0  # lite0's stem and first stages
    assert counted["backbone_flops"] == bare["flops"]
    assert counted["flops"] - counted["backbone_flops"] == 2 * own  # forward and backward
    assert "counted_forward" not in FeatureExtractor.forward.__qualname__  # put back after


def test_a_method_the_flop_counter_cannot_follow_keeps_its_timings(toy_run, monkeypatch):
    def refuse(predict, image):
        raise RuntimeError("no dispatch mode here")

    monkeypatch.setattr(bench_methods, "count_flops", refuse)
    row = bench_methods.measure(toy_run, repeats=1)
    assert row["flops_error"] == "RuntimeError: no dispatch mode here" and row["method_ms"] > 0
    assert "flop_ratio" not in row
    text = report.speed_markdown([{**row, "method": "padim", "budget": "quick", "threads": 2,
                                   "created": "2026-12-07"}])
    assert "| not counted: RuntimeError: no dispatch mode here |" in text


def test_the_speed_table_shows_the_flop_ratio(toy_run):
    row = bench_methods.measure(toy_run, repeats=2)
    assert row["gflops"] >= row["backbone_gflops"] == row["bare_gflops"] > 0  # PaDiM: one CNN
    assert row["flop_ratio"] > 1  # its Mahalanobis products beyond the forward
    text = report.speed_markdown([{**row, "method": "padim", "budget": "quick", "threads": 2,
                                   "created": "2026-12-07"}])
    assert "GFLOP per image" in text.splitlines()[0]
    assert f"| {row['gflops']:.2f} (x{row['flop_ratio']:.2f}) |" in text


def test_the_speed_table_shows_the_time_inside_backbone_forwards(toy_run):
    row = bench_methods.measure(toy_run, repeats=3)
    assert row["backbone_forwards"] == 1 and row["backbones_ms"] > 0  # PaDiM: one CNN
    assert row["backbones_ratio"] >= 1
    text = report.speed_markdown([{**row, "method": "padim", "budget": "quick", "threads": 2,
                                   "created": "2026-12-07"}])
    assert "inside backbone forwards" in text.splitlines()[0]
    assert f"| {row['backbones_ms']:.1f} (1); x{row['backbones_ratio']:.2f} |" in text


def test_the_report_draws_where_predicts_time_goes(tmp_path):
    """One bar per measured method, split inside / outside backbone forwards; rows measured
    before the split existed draw no plot."""
    rows = [{"method": name, "budget": "quick", "backbone": "b", "image_size": 64,
             "bare_ms": 2.0, "method_ms": 3.0 * (i + 1), "ratio": 1.5 * (i + 1), "threads": 2,
             "load_before": 0.1, "load_after": 0.1, "created": "2026-12-07",
             "backbones_ms": 2.5, "backbone_forwards": 1 + i, "backbones_ratio": 1.2 * (i + 1)}
            for i, name in enumerate(["padim", "differnet"])]
    rows[1].update(gflops=4.3, flop_ratio=18.0)  # a diamond where its FLOPs would end; padim's row has none
    text, plots = report.render_report([], speed=rows)
    assert plots["speed-quick.png"]["rows"] == rows and "report/speed-quick.png" in text
    (path,) = report.draw_plots({"speed-quick.png": plots["speed-quick.png"]}, tmp_path)
    assert path.stat().st_size > 1000
    split = ("backbones_ms", "backbone_forwards", "backbones_ratio")
    older = [{k: v for k, v in r.items() if k not in split} for r in rows]
    assert "speed-quick.png" not in report.render_report([], speed=older)[1]
