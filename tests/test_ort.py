"""ONNX Runtime for frozen backbones (kit/ort.py): the same maps as PyTorch, batch by batch."""

from __future__ import annotations

import copy

import pytest
import torch

from kit.backbones import FeatureExtractor
import kit.ort
from kit.allocator import release_free_memory
from kit.ort import _chunks, runtime, setup_seconds


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KIT_BACKBONE_RUNTIME", raising=False)


def _pytorch(extractor, x, monkeypatch):
    monkeypatch.setenv("KIT_BACKBONE_RUNTIME", "torch")
    try:
        with torch.inference_mode():
            return extractor(x)
    finally:
        monkeypatch.setenv("KIT_BACKBONE_RUNTIME", "auto")


def test_onnx_runtime_gives_pytorchs_maps_deterministically_and_batch_by_batch(monkeypatch):
    """Real Lite0 weights at 96 px: ONNX Runtime's maps equal PyTorch's to float rounding, the
    same twice, and an image's maps do not depend on the batch it came in (5 = 4 + 1)."""
    extractor = FeatureExtractor("tf_efficientnet_lite0", (2, 4), "offline", channels_last=True)
    assert extractor.numerics == "onnxruntime"
    x = torch.rand(5, 3, 96, 96)
    with torch.inference_mode():
        maps = extractor(x)
        again = extractor(x)
        alone = [extractor(x[i:i + 1]) for i in range(5)]
    assert extractor._graphs.exports == 2 and extractor._graphs.failed is None  # batch 4 and 1
    assert [tuple(m.shape) for m in maps] == [(5, 40, 12, 12), (5, 320, 3, 3)]
    assert all(torch.equal(a, b) for a, b in zip(maps, again))
    for i, single in enumerate(alone):
        assert all(torch.equal(m[i:i + 1], s) for m, s in zip(maps, single))
    for a, b in zip(maps, _pytorch(extractor, x, monkeypatch)):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-4


def test_maps_are_owned_by_pytorch_not_views_of_the_sessions_memory():
    """A method keeps its training maps: a map that viewed the memory ONNX Runtime returned
    would pin the session's arena (a numpy-backed storage, which cannot be resized)."""
    extractor = FeatureExtractor("tf_efficientnet_lite0", (1, 2), "offline")
    with torch.inference_mode():
        maps = extractor(torch.rand(2, 3, 64, 64))
    assert extractor.numerics == "onnxruntime" and extractor._graphs.failed is None
    assert all(m.untyped_storage().resizable() for m in maps)


def test_graphs_are_reused_by_weights_and_retraced_when_weights_change(monkeypatch):
    extractor = FeatureExtractor("tf_efficientnet_lite0", (3,), "none")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        first = extractor(x)[0]
        twin = copy.deepcopy(extractor)  # same weights: the graph on disk serves it
        assert torch.equal(twin(x)[0], first) and twin._graphs.exports == 0
        state = {k: v + 0.01 if v.is_floating_point() else v
                 for k, v in extractor.state_dict().items()}
        extractor.load_state_dict(state)
        changed = extractor(x)[0]
    assert extractor._graphs.exports == 2
    assert not torch.equal(changed, first)
    expected = _pytorch(extractor, x, monkeypatch)[0]
    assert float((changed - expected).abs().max() / expected.abs().max()) < 1e-4


def test_pytorch_runs_what_onnx_runtime_cannot(monkeypatch):
    """Autograd, a trainable encoder and KIT_BACKBONE_RUNTIME=torch all stay in PyTorch."""
    frozen = FeatureExtractor("tf_efficientnet_lite0", (2,), "none")
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    frozen(x)[0].sum().backward()
    assert x.grad is not None and "_graphs" not in frozen.__dict__
    trainable = FeatureExtractor("tf_efficientnet_lite0", (2,), "none", trainable=True)
    with torch.no_grad():
        trainable(torch.rand(1, 3, 64, 64))
    assert "_graphs" not in trainable.__dict__ and trainable.numerics == "plain"
    monkeypatch.setenv("KIT_BACKBONE_RUNTIME", "torch")
    assert runtime() == "torch" and frozen.numerics == "plain"
    with torch.no_grad():
        frozen(torch.rand(1, 3, 64, 64))
    assert "_graphs" not in frozen.__dict__
    monkeypatch.setenv("KIT_BACKBONE_RUNTIME", "tensorrt")
    with pytest.raises(ValueError, match="KIT_BACKBONE_RUNTIME"):
        runtime()


def test_a_graph_that_cannot_be_made_falls_back_to_pytorch_once(monkeypatch):
    """A backbone the exporter refuses still gives its maps (PyTorch's), with one warning; the
    shape is not traced again. Tracing time is counted apart from inference."""
    extractor = FeatureExtractor("tf_efficientnet_lite0", (2,), "none")
    x = torch.rand(2, 3, 64, 64)
    calls = []

    def refuse(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("an operator the exporter does not know")

    monkeypatch.setattr(kit.ort, "trace_to_onnx", refuse)
    before = setup_seconds()
    with pytest.warns(RuntimeWarning, match="PyTorch runs it instead"):
        with torch.no_grad():
            got = extractor(x)[0]
    with torch.no_grad():
        again = extractor(x)[0]
    assert len(calls) == 1 and "exporter does not know" in extractor._graphs.failed
    assert setup_seconds() >= before
    expected = _pytorch(extractor, x, monkeypatch)[0]
    assert torch.equal(got, expected) and torch.equal(again, expected)


def test_a_run_closes_the_sessions_earlier_runs_opened():
    extractor = FeatureExtractor("tf_efficientnet_lite0", (2,), "none")
    with torch.no_grad():
        extractor(torch.rand(1, 3, 64, 64))
    assert kit.ort._SESSIONS
    release_free_memory()
    assert not kit.ort._SESSIONS


def test_batches_are_cut_into_powers_of_two():
    assert _chunks(8) == [8]
    assert _chunks(13) == [8, 4, 1]
    assert _chunks(70) == [32, 32, 4, 2]
    assert sum(_chunks(583)) == 583


def test_the_graph_cache_keeps_its_budget_deleting_the_least_recently_used(tmp_path):
    """Graphs beyond the budget go, oldest use first; the graph just made and files the kit did
    not name (a user's model.onnx) stay."""
    import os

    folder = tmp_path / "onnx"
    folder.mkdir()
    graphs = [folder / f"{i:020x}.onnx" for i in range(4)]
    for age, path in enumerate(graphs):
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1000 + age, 1000 + age))  # graphs[0] used longest ago
    mine = folder / "model.onnx"
    mine.write_bytes(b"x" * 10_000)
    os.utime(graphs[1], (5000, 5000))  # used again since: now the newest
    deleted = kit.ort.prune_graphs(folder, limit_bytes=2500, keep=graphs[0])
    assert deleted == [graphs[2], graphs[3]]
    assert sorted(folder.iterdir()) == sorted([graphs[0], graphs[1], mine])
    assert kit.ort.prune_graphs(folder, limit_bytes=2500) == []


def test_tracing_a_graph_prunes_the_cache_to_its_budget(monkeypatch, tmp_path):
    monkeypatch.setenv("KIT_ONNX_CACHE_MB", "0")  # keep only the graph just made
    extractor = FeatureExtractor("tf_efficientnet_lite0", (2,), "none")
    with torch.no_grad():
        extractor(torch.rand(1, 3, 64, 64))
        extractor(torch.rand(2, 3, 64, 64))
    assert extractor._graphs.exports == 2
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    monkeypatch.setenv("KIT_ONNX_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="KIT_ONNX_CACHE_MB"):
        kit.ort.cache_limit_bytes()


def test_a_graph_pruned_by_another_process_is_traced_again_and_reopening_marks_its_use(
        monkeypatch, tmp_path):
    import os

    extractor = FeatureExtractor("tf_efficientnet_lite0", (2,), "none")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        first = extractor(x)[0]
    (graph,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    os.utime(graph, (1000, 1000))
    kit.ort.drop_sessions()  # as a run does before it begins
    with torch.no_grad():
        assert torch.equal(extractor(x)[0], first)
    assert graph.stat().st_mtime > 1000  # reopened: used now, so pruned last

    found = kit.ort.GraphRunner._graph

    def pruned_right_after(self, *args):
        key, path = found(self, *args)
        if not getattr(self, "pruned_once", False):
            self.pruned_once = True
            path.unlink()  # another process's prune, between finding the graph and opening it
        return key, path

    monkeypatch.setattr(kit.ort.GraphRunner, "_graph", pruned_right_after)
    kit.ort.drop_sessions()
    with torch.no_grad():
        again = extractor(x)[0]
    assert extractor._graphs.failed is None and torch.equal(again, first)
    assert extractor._graphs.exports == 2 and graph.is_file()  # traced again, same graph
