"""A fitted method as one ONNX graph, scored by ONNX Runtime: the kit's deployment path.

    python -m kit onnx runs/cflow-default-quick-s0-c7cce437     # -> <run>/model.onnx, checked

``export_onnx`` traces ``method.predict`` at one input size and batch (the backbone, the
method's model and its post-processing: upsampling, blur, filters) into ``model.onnx``;
``OnnxPredictor`` runs that file with ONNX Runtime and returns the same :class:`Prediction`
as the method, so a machine with only ``onnxruntime`` and NumPy can score images. How much
faster than eager PyTorch it is, per method, is the speed report's ONNX column
(``benchmarks/bench_methods.py --onnx``); its outputs agree with PyTorch's to float rounding,
and ``python -m kit onnx`` keeps no graph that differs by more than :data:`MAX_REL_DIFF`.

Why the TorchScript tracer (``torch.onnx.export(dynamo=False)``), deprecated since PyTorch
2.9: the newer ``torch.export`` path refused the methods we tried (cflow, ndp_net) at the
input checks of ``predict`` (a data-dependent ``if``), which the tracer records as the branch
taken. The graph is fixed to the traced size and batch; :class:`OnnxPredictor` cuts a larger
batch into pieces and pads the last one with copies of its last image, which changes no score
because every method scores each image independently of its batch (``tests/test_deploy.py``
checks each method's padded graph against the scores its run recorded).

DifferNet does not export: its maps are gradients of the flow's likelihood with respect to
the input, which ONNX has no operator for. ``export_onnx`` says so in its error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kit.method import AnomalyMethod, Prediction
from kit.ort import OPSET, session_options, trace_to_onnx
from kit.runstore import EXPORT_FILES

# in the run folder, written by `python -m kit onnx`: the graph, and its check against PyTorch
MODEL_FILE, CHECK_FILE = EXPORT_FILES


MAX_REL_DIFF = 1e-4  # a graph further from PyTorch than this, on any output, fails its check


class DeployError(RuntimeError):
    """The deployment path cannot run here (no ONNX Runtime) or gave a wrong graph."""


class OnnxExportError(DeployError):
    """The method's ``predict`` cannot be written as an ONNX graph."""


def output_names(pred: Prediction) -> list[str]:
    """The graph's outputs, in order: ``image_scores``, ``anomaly_maps``, then ``map.<name>``
    and ``score.<name>`` per named map and score (sorted), then ``reconstructions``."""
    return (["image_scores", "anomaly_maps"] + [f"map.{k}" for k in sorted(pred.named_maps)]
            + [f"score.{k}" for k in sorted(pred.named_scores)]
            + (["reconstructions"] if pred.reconstructions is not None else []))


def _flatten(pred: Prediction, names: list[str]) -> tuple[torch.Tensor, ...]:
    parts = {"image_scores": pred.image_scores, "anomaly_maps": pred.anomaly_maps,
             "reconstructions": pred.reconstructions,
             **{f"map.{k}": v for k, v in pred.named_maps.items()},
             **{f"score.{k}": v for k, v in pred.named_scores.items()}}
    return tuple(parts[n] for n in names)


def prediction_from(outputs: dict[str, Any]) -> Prediction:
    """The :class:`Prediction` of ``{output name: array or tensor}`` (:func:`output_names`)."""
    t = {k: torch.as_tensor(v) for k, v in outputs.items()}
    return Prediction(image_scores=t["image_scores"], anomaly_maps=t["anomaly_maps"],
                      named_maps={k[4:]: v for k, v in t.items() if k.startswith("map.")},
                      named_scores={k[6:]: v for k, v in t.items() if k.startswith("score.")},
                      reconstructions=t.get("reconstructions"))


class _Traced(nn.Module):
    """``method.predict`` as a module (the tracer needs one), its outputs flattened."""

    def __init__(self, method: AnomalyMethod, names: list[str]):
        super().__init__()
        self.method, self.names = method, names
        self.parts = nn.ModuleList(method.modules())  # registered, so the tracer sees the weights

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _flatten(self.method.predict(images), self.names)


def export_onnx(method: AnomalyMethod, path: Path | str, batch: int = 1,
                example: torch.Tensor | None = None) -> Path:
    """Write ``method.predict`` for float images ``[batch, 3, S, S]`` in [0, 1] (S the config's
    ``image_size``) as an ONNX graph at ``path``; returns the path. ``example`` (that shape;
    default mid-grey) is the image the tracer runs: any image gives the same graph. The method
    must be fitted and on the CPU. :class:`OnnxExportError` where ``predict`` cannot be traced."""
    s = method.config.image_size
    if example is None:
        example = torch.full((batch, 3, s, s), 0.5)
    if tuple(example.shape) != (batch, 3, s, s):
        raise ValueError(f"example must be [{batch}, 3, {s}, {s}], got {list(example.shape)}")
    for module in method.modules():
        module.eval()
    # one eager call first: the cached upsampling and blur operators (kit.maps) then enter
    # the graph as constants, not as the float64 operations that build them
    names = output_names(method.predict(example))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    name = type(method).__name__
    try:
        trace_to_onnx(_Traced(method, names).eval(), example, tmp, names)
        _annotate(tmp, {"kit.method": getattr(method, "name", name), "kit.image_size": str(s),
                        "kit.batch": str(batch)})
    except Exception as err:  # noqa: BLE001 - re-raised with the method's name and the cause
        tmp.unlink(missing_ok=True)
        first = (str(err).strip().splitlines() or [""])[0][:300]
        hint = (" (its maps are gradients of the flow's likelihood, which ONNX cannot express)"
                if "requires grad" in first else "")
        raise OnnxExportError(f"{name} does not export to ONNX{hint}: "
                              f"{type(err).__name__}: {first}") from err
    tmp.replace(path)
    return path


def _annotate(path: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


class OnnxPredictor:
    """A ``model.onnx`` of :func:`export_onnx` run by ONNX Runtime on the CPU, with ``threads``
    intra-op threads (None: ONNX Runtime's choice). ``predict(images [B, 3, S, S] in [0, 1])``
    returns a :class:`Prediction` like the method's, for any ``B >= 1``."""

    def __init__(self, path: Path | str, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise DeployError("ONNX Runtime is not installed: pip install onnxruntime "
                              "(make setup installs it)") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model (python -m kit onnx RUN writes one)")
        options = session_options(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - a damaged or foreign file
            raise ValueError(f"{self.path}: not a model ONNX Runtime can load "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "kit.image_size" not in meta:
            raise ValueError(f"{self.path}: not written by kit's export_onnx (no kit.image_size)")
        self.method = meta.get("kit.method", "?")
        self.image_size, self.batch = int(meta["kit.image_size"]), int(meta["kit.batch"])
        self.names = [o.name for o in self.session.get_outputs()]

    def predict(self, images: torch.Tensor) -> Prediction:
        s = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"{self.path.name}: images must be [B, 3, {s}, {s}] "
                             f"(the exported size), got {list(images.shape)}")
        x = images.detach().float().cpu().numpy()
        pieces: list[list[np.ndarray]] = []
        for first in range(0, len(x), self.batch):
            chunk = x[first:first + self.batch]
            pad = self.batch - len(chunk)
            if pad:  # copies of the last image: each image is scored on its own
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            out = self.session.run(None, {"images": chunk})
            pieces.append([o[:len(chunk) - pad] for o in out])
        if not pieces:
            raise ValueError(f"{self.path.name}: no images")
        return prediction_from({n: np.concatenate([p[i] for p in pieces])
                                for i, n in enumerate(self.names)})


def max_rel_diff(a: Prediction, b: Prediction) -> float:
    """The largest absolute difference between two predictions' outputs, each relative to the
    largest absolute value of that output in ``a``."""
    names = output_names(a)
    return max(float((x.float() - y.float()).abs().max() / x.float().abs().max().clamp_min(1e-12))
               for x, y in zip(_flatten(a, names), _flatten(b, names)))


def export_run(run_dir: Path | str, n_check: int = 8, batch: int = 1, threads: int = 2,
               data_root: Path | str | None = None, progress: bool = True) -> dict[str, Any]:
    """``python -m kit onnx``: export a run's fitted model for ``batch`` images, score
    ``n_check`` of its test images (spread over the split; from ``data_root`` where the data
    moved) with both PyTorch and the graph in pieces of ``batch``, and time both. Only a graph
    within :data:`MAX_REL_DIFF` of PyTorch on every output becomes ``<run>/model.onnx``, with
    its check in ``<run>/onnx.json``; otherwise :class:`DeployError`, and neither file is
    left. Returns the check."""
    from kit.data import ImageSet, find_category
    from kit.pipeline import restore_method

    if n_check < 1 or batch < 1 or threads < 1:
        raise ValueError(f"check {n_check}, batch {batch}, threads {threads}: each must be >= 1")
    run_dir = Path(run_dir)
    for name in (MODEL_FILE, CHECK_FILE):  # an earlier export's files describe another graph
        (run_dir / name).unlink(missing_ok=True)
    method = restore_method(run_dir, device="cpu")
    config = json.loads((run_dir / "config.json").read_text())
    cat = find_category(data_root or config["data_root"], config["category"])
    samples = cat.test[::max(1, len(cat.test) // n_check)][:n_check]
    if not samples:
        raise ValueError(f"{run_dir}: its category has no test images to check the graph on")
    images = ImageSet(samples, method.config.image_size).tensor(progress=progress).float() / 255.0
    torch.set_num_threads(threads)
    tmp = run_dir / f".{MODEL_FILE}.check"
    start = time.perf_counter()
    try:
        export_onnx(method, tmp, batch=batch)
        export_s = time.perf_counter() - start
        predictor = OnnxPredictor(tmp, threads=threads)
        eager_s = onnx_s = worst = 0.0
        for first in range(0, len(images), batch):
            piece = images[first:first + batch]
            t0 = time.perf_counter()
            eager = method.predict(piece)
            t1 = time.perf_counter()
            fast = predictor.predict(piece)
            onnx_s += time.perf_counter() - t1
            eager_s += t1 - t0
            worst = max(worst, max_rel_diff(eager, fast))
        if not worst <= MAX_REL_DIFF:
            raise DeployError(f"{run_dir}: the exported graph differs from PyTorch by {worst:.1e} "
                              f"of an output's range (at most {MAX_REL_DIFF:.0e}); not kept")
        tmp.replace(run_dir / MODEL_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    check = {"model": MODEL_FILE, "method": predictor.method, "image_size": predictor.image_size,
             "batch": batch, "export_s": round(export_s, 2), "images": len(samples),
             "max_rel_diff": float(f"{worst:.2e}"), "threads": threads,
             "eager_ms_per_image": round(1000 * eager_s / len(samples), 2),
             "onnx_ms_per_image": round(1000 * onnx_s / len(samples), 2),
             "opset": OPSET, "torch": torch.__version__,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (run_dir / CHECK_FILE).write_text(json.dumps(check, indent=1) + "\n")
    return check


def export_runs(run_dirs: list[Path | str], n_check: int = 4, threads: int = 2) -> list[dict[str, Any]]:
    """:func:`export_run` for each run (notebook 05): its check, with ``run``, or for a method
    that does not export, ``{"run", "method", "error"}``."""
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        try:
            rows.append({"run": run_dir.name, **export_run(run_dir, n_check=n_check,
                                                           threads=threads, progress=False)})
        except OnnxExportError as err:
            method = json.loads((run_dir / "config.json").read_text()).get("method", "?")
            rows.append({"run": run_dir.name, "method": method, "error": str(err)})
    return rows


def checks_markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`export_runs`' rows."""
    lines = ["| method | export s | largest difference to PyTorch | PyTorch ms/image | "
             "ONNX Runtime ms/image | faster by |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['method']}` | does not export: {r['error'].split(': ')[0]} | | | | |")
            continue
        lines.append(f"| `{r['method']}` | {r['export_s']:.1f} | {r['max_rel_diff']:.0e} | "
                     f"{r['eager_ms_per_image']:.1f} | {r['onnx_ms_per_image']:.1f} | "
                     f"x{r['eager_ms_per_image'] / r['onnx_ms_per_image']:.2f} |")
    return "\n".join(lines)
