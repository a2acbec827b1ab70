"""ONNX Runtime for frozen backbones: the same feature maps as PyTorch, about twice as fast on a CPU.

A frozen backbone run without autograd on the CPU (feature extraction, scoring) goes through
ONNX Runtime: :class:`kit.backbones.FeatureExtractor` traces its network once per input shape
into an ONNX graph, kept in ``<cache>/onnx/`` under a hash of everything that decides the
graph (the network's name, stage taps, input shape, and the exact bytes of its weights), and
runs it with the caller's thread count. The folder keeps ``KIT_ONNX_CACHE_MB`` (1024) of
graphs; tracing a new one deletes the least recently used beyond that (:func:`prune_graphs`).
On 2 CPU cores ONNX Runtime ran EfficientNet-Lite0 about 2x faster than eager PyTorch at the batches the kit uses, with outputs equal to float
rounding (a few 1e-6 relative; ``benchmarks/bench_ort.py`` measures both).

PyTorch still runs a forward that needs autograd (DifferNet's gradient maps, NDP-Net's
perceptual loss, a trainable encoder), a GPU forward, and any forward when
``KIT_BACKBONE_RUNTIME=torch``. The two paths agree to float rounding, not bit for bit; the
feature caches keep them apart (``FeatureExtractor.numerics``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kit.paths import cache_dir

__all__ = ["OPSET", "RUNTIMES", "runtime", "trace_to_onnx", "session_options", "GraphRunner",
           "setup_seconds", "drop_sessions", "prune_graphs", "cache_limit_bytes"]

OPSET = 18  # ONNX Runtime 1.16 and newer
RUNTIMES = ("auto", "torch")
_ENV = "KIT_BACKBONE_RUNTIME"
# a graph further than this from PyTorch on the tracing input is refused (never used)
MAX_REL_DIFF = 1e-4
# graphs kept in <cache>/onnx, least recently used deleted beyond it: one per network, taps,
# weights and batch piece, so trained encoders (CLS-CNFs) and old weights pile up otherwise
_CACHE_ENV = "KIT_ONNX_CACHE_MB"
DEFAULT_CACHE_MB = 1024
_GRAPH_NAME = re.compile(r"[0-9a-f]{20}\.onnx")  # what _graph names them: nothing else is pruned


def cache_limit_bytes() -> int:
    """How many bytes of graphs ``<cache>/onnx`` keeps: ``KIT_ONNX_CACHE_MB`` (default
    :data:`DEFAULT_CACHE_MB`)."""
    value = os.environ.get(_CACHE_ENV, "").strip() or str(DEFAULT_CACHE_MB)
    try:
        mb = float(value)
    except ValueError:
        raise ValueError(f"{_CACHE_ENV}={value!r}: give a number of megabytes") from None
    if mb < 0:
        raise ValueError(f"{_CACHE_ENV}={value!r}: give a number of megabytes, 0 or more")
    return int(mb * 2**20)


def prune_graphs(folder: Path, limit_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used graphs in ``folder`` until those left fit in
    ``limit_bytes``; ``keep`` (the graph just made) is never deleted. Only files named as the
    kit names its graphs are counted or deleted. Returns the files deleted."""
    graphs = []
    for path in folder.glob("*.onnx"):
        if _GRAPH_NAME.fullmatch(path.name):
            try:
                stat = path.stat()
            except OSError:  # deleted meanwhile by another process
                continue
            graphs.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in graphs)
    deleted = []
    for _, size, path in sorted(graphs):  # oldest use first
        if total <= limit_bytes:
            break
        if keep is not None and path == keep:
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError:  # another user's file in a shared cache: left, and counted
            continue
        total -= size
        deleted.append(path)
    return deleted


def runtime() -> str:
    """The backbone runtime asked for: ``KIT_BACKBONE_RUNTIME`` (``auto``: ONNX Runtime where
    it can run the forward, else PyTorch; ``torch``: PyTorch always). Default ``auto``."""
    value = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if value not in RUNTIMES:
        raise ValueError(f"{_ENV}={value!r}: use one of {RUNTIMES}")
    return value


def trace_to_onnx(module: nn.Module, example: torch.Tensor, path: Path | str,
                  output_names: list[str] | None = None) -> None:
    """Trace ``module(example)`` into an ONNX graph at ``path`` with the kit's exporter
    settings (the TorchScript tracer, :data:`OPSET`, the input named ``images``). The graph
    takes the example's shape only: ONNX Runtime ran a graph with a free batch axis about 45 %
    slower (EfficientNet-Lite0, 2 threads)."""
    with warnings.catch_warnings():
        # the tracer's notes that each shape check and `if` becomes a constant: the fixed size
        # this graph is made for
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)  # only a missed optimisation
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=output_names)


def session_options(threads: int | None = None):
    """ONNX Runtime session options: ``threads`` intra-op threads (None: its choice), and no
    spin-waiting after a run, whose busy threads would take the CPU from whatever runs next
    (on a 2-core laptop, the caller's own PyTorch)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def weights_digest(module: nn.Module) -> str:
    """Hash of a module's parameters and buffers: names, shapes, dtypes and bytes."""
    h = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())  # C order whatever the memory layout
    return h.hexdigest()[:20]


def _version(tensors: list[torch.Tensor]) -> tuple | None:
    """Changes whenever one of a network's ``tensors`` (parameters and buffers) is modified in
    place (an optimiser step, ``load_state_dict``); None where a tensor keeps no count (one made
    in inference mode): then nobody can tell, and the weights are hashed again. A write through
    ``.data`` bumps no count and is not seen."""
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((id(t), t._version) for t in tensors)


# sessions shared by every runner of the same graph in this process, (graph, threads) ->
# session, the least recently used dropped beyond _MAX_SESSIONS; a run drops them all before it
# begins (kit.allocator.release_free_memory), so its peak memory is its own
_SESSIONS: OrderedDict[tuple[str, int], Any] = OrderedDict()
_MAX_SESSIONS = 16
_LOCK = threading.RLock()  # the sessions, and tracing (the tracer's state is global)
_SETUP_SECONDS = [0.0]  # seconds spent tracing, checking and opening graphs in this process


def setup_seconds() -> float:
    """Seconds this process has spent tracing, checking and opening graphs: a timing of
    ``predict`` subtracts what it paid for them (``kit.pipeline.score_images``)."""
    return _SETUP_SECONDS[0]


def drop_sessions() -> None:
    """Close every open session (their weights and buffers); graphs on disk stay."""
    with _LOCK:
        _SESSIONS.clear()


class GraphRunner:
    """Runs ``forward`` (PyTorch: float ``[B, 3, H, W]`` -> list of maps, computed by the frozen
    ``network``) in ONNX Runtime, one graph per input shape (batches are cut into powers of
    two, so a few shapes serve every batch), traced on first use. ``describe``:
    what decides the graph beyond the weights (name, taps), part of each graph's hash.
    ``failed``: why the graph of some shape could not be used (then the caller runs PyTorch)."""

    def __init__(self, network: nn.Module, forward: Callable[[torch.Tensor], list[torch.Tensor]],
                 describe: str):
        self.network = network
        self.forward = forward
        self.describe = describe
        self._digest: str | None = None
        self._seen_version: tuple | None = None
        self.exports = 0  # graphs this runner traced (tests read it)
        self.failed: str | None = None
        self._refused: set[tuple[str, tuple[int, ...]]] = set()  # (weights, shape) that failed

    def _weights(self) -> str:
        if getattr(self, "_tensors", None) is None:  # listed once: walking the modules costs
            self._tensors = [*self.network.parameters(), *self.network.buffers()]
        version = _version(self._tensors)
        if self._digest is None or version is None or version != self._seen_version:
            self._digest, self._seen_version = weights_digest(self.network), version
        return self._digest

    def _graph(self, x: torch.Tensor, n_out: int, weights: str) -> tuple[str, Path]:
        """The graph for ``x``'s shape and the ``weights`` digest, traced and checked against
        PyTorch if not on disk; raises where it cannot be made or disagrees."""
        key = hashlib.sha1(f"{self.describe}|{tuple(x.shape)}|{weights}|opset{OPSET}|"
                           f"torch{torch.__version__}".encode()).hexdigest()[:20]
        path = cache_dir() / "onnx" / f"{key}.onnx"
        if path.is_file():
            return key, path
        limit = cache_limit_bytes()  # a bad setting is refused before the trace, not after
        with _LOCK:  # one trace at a time; another thread may have made it meanwhile
            if path.is_file():
                return key, path
            start = time.perf_counter()
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
                tmp = Path(f.name)
            example = x.detach().contiguous()
            try:
                trace_to_onnx(_Traced(self.network, self.forward).eval(), example, tmp,
                              [f"map{i}" for i in range(n_out)])
                with torch.no_grad():
                    want = self.forward(example)
                got = self._open(tmp, example)
                error = max(float((g - w).abs().max() / w.abs().max().clamp_min(1e-12))
                            for g, w in zip(got, want))
                if len(got) != len(want) or not error <= MAX_REL_DIFF:  # NaN fails too
                    raise ValueError(f"its maps differ from PyTorch's by {error:.1e} (relative)")
                os.replace(tmp, path)
                prune_graphs(path.parent, limit, keep=path)
            finally:
                tmp.unlink(missing_ok=True)
                _SETUP_SECONDS[0] += time.perf_counter() - start
            self.exports += 1
        return key, path

    @staticmethod
    def _open(path: Path, x: torch.Tensor, key: str | None = None) -> list[torch.Tensor]:
        """Run the graph at ``path`` on ``x``, through the shared session of ``key`` (opened
        and kept if new) or, without a key, a session of its own."""
        import onnxruntime as ort

        threads = torch.get_num_threads()
        with _LOCK:
            session = _SESSIONS.get((key, threads)) if key else None
            if session is None:
                start = time.perf_counter()
                session = ort.InferenceSession(str(path), session_options(threads),
                                               providers=["CPUExecutionProvider"])
                _SETUP_SECONDS[0] += time.perf_counter() - start
                with contextlib.suppress(OSError):  # its time of last use, for prune_graphs
                    os.utime(path)
                if key:
                    _SESSIONS[(key, threads)] = session
                    while len(_SESSIONS) > _MAX_SESSIONS:
                        _SESSIONS.popitem(last=False)
            if key:
                _SESSIONS.move_to_end((key, threads))
        outputs = session.run(None, {"images": x.detach().contiguous().numpy()})
        # copied out: the arrays ONNX Runtime returns are views of memory its session holds,
        # so maps a caller keeps (a method's training features) would pin that memory, and
        # the session would claim more for every later batch (about 4x the kept maps' bytes)
        return [torch.from_numpy(o).clone() for o in outputs]

    def __call__(self, x: torch.Tensor, n_out: int) -> list[torch.Tensor] | None:
        """The maps for float32 ``x [B, 3, H, W]`` on the CPU, as CPU tensors; None where a
        graph cannot be made or run for one of its pieces (:attr:`failed` says why; the
        caller then runs PyTorch, and a warning says so once)."""
        if x.shape[0] == 0:
            return None
        parts = []
        weights = self._weights()
        for chunk in x.split(_chunks(x.shape[0])):
            refused = (weights, tuple(chunk.shape))
            if refused in self._refused:
                return None
            try:
                key, path = self._graph(chunk, n_out, weights)
                try:
                    parts.append(self._open(path, chunk, key))
                except Exception:
                    if path.is_file():
                        raise
                    # pruned by another process between finding and opening it: trace again
                    key, path = self._graph(chunk, n_out, weights)
                    parts.append(self._open(path, chunk, key))
            except Exception as err:  # noqa: BLE001 - any failure falls back to PyTorch
                self._refused.add(refused)
                self.failed = (f"{self.describe} at {tuple(chunk.shape)}: "
                               f"{type(err).__name__}: {str(err).strip()[:300]}")
                warnings.warn(f"ONNX Runtime cannot run {self.failed}; PyTorch runs it instead",
                              RuntimeWarning, stacklevel=3)
                return None
        return parts[0] if len(parts) == 1 else [torch.cat(maps) for maps in zip(*parts)]


def _chunks(batch: int, largest: int = 32) -> list[int]:
    """``batch`` as powers of two, largest first (13 -> 8, 4, 1), none above ``largest``: a graph
    holds one batch size, so a few sizes serve every batch. Each image's maps do not depend on
    the batch it is in (tests/test_ort.py)."""
    sizes = []
    while batch > 0:
        size = min(largest, 1 << (batch.bit_length() - 1))
        sizes.append(size)
        batch -= size
    return sizes


class _Traced(nn.Module):
    """``forward`` as a module whose parameters are ``network``'s, for the tracer."""

    def __init__(self, network: nn.Module, forward: Callable[[torch.Tensor], list[torch.Tensor]]):
        super().__init__()
        self.network = network
        self._forward = forward

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self._forward(x))
