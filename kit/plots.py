"""Plotly figures shared by the dashboard and the notebooks.

Anomaly maps use one colour scale per run (:class:`MapScale`), fixed from statistics of
anomaly maps on held-out *normal* images, never from the image on screen: per-image min-max
stretches the noise of a normal image over the whole scale and makes it look defective.

Images are ``[H, W, 3]`` uint8 RGB, maps ``[H, W]`` float (larger = more anomalous), masks
``[H, W]`` bool. Curves come from ``curves.json`` (:func:`kit.metrics.curves`).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image

MAP_COLORS = "Inferno"
THRESHOLD_COLOR = "#00e5ff"  # cyan: visible on inferno and on grey tiles
MASK_COLOR = "#39ff14"  # green outline of the ground truth
NORMAL_COLOR, DEFECT_COLOR = "#1f77b4", "#d62728"
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
              "#bcbd22")  # one distinct colour per run in curve plots


def _lut(name: str = MAP_COLORS) -> np.ndarray:
    """A plotly colour scale as a ``[256, 3]`` uint8 lookup table."""
    from plotly.colors import sample_colorscale, unlabel_rgb

    colors = sample_colorscale(name, list(np.linspace(0.0, 1.0, 256)))
    return np.array([unlabel_rgb(c) for c in colors]).round().clip(0, 255).astype(np.uint8)


_LUT = _lut()


@dataclass(frozen=True)
class MapScale:
    """The display scale of one run's anomaly maps, from normal-image statistics only.

    ``vmin`` = median pixel of normal maps (p50), ``pixel_threshold`` = p99.9 of normal maps
    (about one normal pixel in a thousand lies above it), ``vmax`` = p99.9 + (p99.9 - p50),
    so the pixel threshold sits in the middle of the scale and defects have room above it.
    ``image_threshold`` is the run's decision threshold on image scores (metrics.json).
    """

    vmin: float
    vmax: float
    pixel_threshold: float
    image_threshold: float | None = None

    @classmethod
    def from_stats(cls, stats: Mapping[str, float], image_threshold: float | None = None) -> "MapScale":
        p50, p999 = float(stats["p50"]), float(stats["p999"])
        span = p999 - p50
        if not span > 0:  # constant normal maps (e.g. an untrained toy): keep a usable scale
            span = max(abs(p50) * 0.1, 1e-6)
        return cls(vmin=p50, vmax=p999 + span, pixel_threshold=p999,
                   image_threshold=None if image_threshold is None else float(image_threshold))

    def normalise(self, amap: np.ndarray) -> np.ndarray:
        """``[H, W]`` map -> ``[H, W]`` float32 in [0, 1] on this scale (clipped)."""
        z = (np.asarray(amap, dtype=np.float32) - self.vmin) / (self.vmax - self.vmin)
        return np.clip(z, 0.0, 1.0)

    def describe(self) -> str:
        """One line for captions: what the colours mean."""
        text = (f"colour scale {self.vmin:.4g} (median normal pixel) to {self.vmax:.4g}; "
                f"cyan contour = pixel threshold {self.pixel_threshold:.4g} "
                "(99.9th percentile of held-out normal maps)")
        if self.image_threshold is not None:
            text += f"; image threshold {self.image_threshold:.4g}"
        return text


def colorize(amap: np.ndarray, scale: MapScale) -> np.ndarray:
    """Map ``[H, W]`` -> RGB ``[H, W, 3]`` uint8 with the inferno colours on the run's scale."""
    return _LUT[(scale.normalise(amap) * 255).round().astype(np.uint8)]


def blend(image: np.ndarray, amap: np.ndarray, scale: MapScale) -> np.ndarray:
    """Image ``[H, W, 3]`` uint8 under its coloured map: ``[H, W, 3]`` uint8.

    The map is transparent in the lower 30% of the scale and grows to 80% opacity at the top,
    so the photo stays visible where the map looks normal.
    """
    z = scale.normalise(amap)
    alpha = (0.8 * np.clip((z - 0.3) / 0.7, 0.0, 1.0))[..., None]
    out = image.astype(np.float32) * (1 - alpha) + _LUT[(z * 255).round().astype(np.uint8)] * alpha
    return out.round().astype(np.uint8)


def png_data_uri(image: np.ndarray) -> str:
    """``[H, W, 3]`` uint8 -> ``data:image/png;base64,...`` (much lighter than a JSON array)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _picture(traces: list, title: str, height: int, shape: tuple[int, ...],
             margin: dict | None = None) -> go.Figure:
    """A figure of image-like ``traces``: square pixels, no axes, y pointing down, the axes
    spanning exactly the ``shape = (H, W, ...)`` pixels (line traces would pad the range).

    Built in one constructor call from plain dicts: plotly validates the whole figure once
    instead of once per ``add_trace`` / ``update_*`` call (3 ms instead of 20-40 ms, which is
    most of the time of switching images in the dashboard).
    """
    h, w = shape[:2]
    layout = dict(title=dict(text=title, font=dict(size=13)), height=height, showlegend=False,
                  margin={**dict(l=0, r=0, t=30, b=0), **(margin or {})},
                  xaxis=dict(visible=False, range=[-0.5, w - 0.5], constrain="domain"),
                  yaxis=dict(visible=False, range=[h - 0.5, -0.5], scaleanchor="x",
                             constrain="domain"))
    return go.Figure(data=[t for t in traces if t is not None], layout=layout)


def contour_trace(z: np.ndarray, level: float, color: str, name: str,
                  dash: str = "solid") -> dict | None:
    """The iso-lines of ``z [H, W]`` at ``level`` as one line trace (a plotly trace dict;
    None when there are none).

    Traced here (marching squares) rather than by plotly, so the browser gets a few hundred
    points instead of the whole map.
    """
    from skimage.measure import find_contours

    xs: list[float | None] = []
    ys: list[float | None] = []
    for line in find_contours(np.asarray(z, dtype=np.float32), level):
        xs.extend(line[:, 1].round(1).tolist() + [None])  # None breaks the line between pieces
        ys.extend(line[:, 0].round(1).tolist() + [None])
    if not xs:
        return None
    return dict(type="scatter", x=xs, y=ys, mode="lines", name=name, hoverinfo="name",
                line=dict(color=color, width=1.5, dash=dash))


def _image_trace(image: np.ndarray) -> dict:
    return dict(type="image", source=png_data_uri(image), x0=0, dx=1, y0=0, dy=1, hoverinfo="skip")


def tint_mask(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Image ``[H, W, 3]`` uint8 with the defect ``mask [H, W]`` tinted red and its border
    drawn green, as a new ``[H, W, 3]`` uint8 array (an <img>, no plotting needed)."""
    if mask is None or not mask.any():
        return image
    from scipy.ndimage import binary_erosion

    out = image.astype(np.float32)
    out[mask] = 0.6 * out[mask] + 0.4 * np.array([255.0, 0.0, 0.0])
    border = mask & ~binary_erosion(mask)
    out[border] = (57, 255, 20)  # MASK_COLOR
    return out.round().astype(np.uint8)


def image_figure(image: np.ndarray, mask: np.ndarray | None = None, title: str = "",
                 height: int = 260) -> go.Figure:
    """The test image ``[H, W, 3]``; with ``mask [H, W]`` its defect tinted red and outlined green."""
    return _picture([_image_trace(tint_mask(image, mask))], title, height, image.shape)


def _colorbar_trace(scale: MapScale) -> dict:
    """An invisible point that only carries the colour bar (images have none of their own)."""
    # horizontal, under the map: a vertical bar would take a third of a narrow column
    bar = dict(orientation="h", thickness=8, len=1.0, y=-0.02, yanchor="top",
               tickvals=[scale.vmin, scale.pixel_threshold, scale.vmax],
               ticktext=[f"p50 {scale.vmin:.3g}", f"thr {scale.pixel_threshold:.3g}",
                         f"{scale.vmax:.3g}"], tickfont=dict(size=10),
               ticklabeloverflow="allow")  # the end labels overhang the bar: draw them anyway
    return dict(type="scatter", x=[None], y=[None], mode="markers", hoverinfo="skip",
                showlegend=False, marker=dict(colorscale=MAP_COLORS, cmin=scale.vmin,
                                              cmax=scale.vmax, color=[scale.vmin],
                                              showscale=True, colorbar=bar))


def resize_map(amap: np.ndarray, size: int) -> np.ndarray:
    """Map ``[h, w]`` -> ``[size, size]`` float32, bilinear: runs store small display copies
    of their maps, drawn over the image at the size the method saw it."""
    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape == (size, size):
        return amap
    import torch

    x = torch.from_numpy(np.ascontiguousarray(amap))[None, None]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                           align_corners=False)[0, 0].numpy()


def anomaly_map_figure(amap: np.ndarray, scale: MapScale, title: str = "",
                       height: int = 260) -> go.Figure:
    """Anomaly map ``[H, W]`` on the run's fixed scale, with the pixel threshold contour."""
    traces = [_image_trace(colorize(amap, scale)),
              contour_trace(amap, scale.pixel_threshold, THRESHOLD_COLOR, "pixel threshold"),
              _colorbar_trace(scale)]
    # margins: room for the colour bar's labels
    return _picture(traces, title, height, np.shape(amap), margin=dict(b=34, l=14, r=14))


def overlay_figure(image: np.ndarray, amap: np.ndarray, scale: MapScale, mask: np.ndarray | None = None,
                   title: str = "", height: int = 260) -> go.Figure:
    """Image ``[H, W, 3]`` under its map ``[H, W]`` (see :func:`blend`), the pixel threshold
    contour (cyan) and, given ``mask [H, W]``, the ground truth outline (dotted green)."""
    traces = [_image_trace(blend(image, amap, scale)),
              contour_trace(amap, scale.pixel_threshold, THRESHOLD_COLOR, "pixel threshold")]
    if mask is not None and mask.any():
        traces.append(contour_trace(mask.astype(np.float32), 0.5, MASK_COLOR, "ground truth",
                                    dash="dot"))
    return _picture(traces, title, height, image.shape)


# ---------------------------------------------------------------------------------------------
# curves and histograms
# ---------------------------------------------------------------------------------------------

CURVES = {  # curves.json key -> (x field, y field, title, x label, y label)
    "image_roc": ("fpr", "tpr", "Image ROC", "false positive rate", "true positive rate"),
    "image_pr": ("recall", "precision", "Image precision-recall", "recall", "precision"),
    "pixel_roc": ("fpr", "tpr", "Pixel ROC", "false positive rate", "true positive rate"),
    "pro": ("fpr", "pro", "Per-region overlap (to FPR 0.3)", "false positive rate", "PRO"),
}


def curve_figure(curves_by_run: Mapping[str, Mapping], kind: str, height: int = 340) -> go.Figure:
    """One curve of ``kind`` (a key of :data:`CURVES`) per run: ``{label: curves.json}``."""
    xk, yk, title, xlabel, ylabel = CURVES[kind]
    fig = go.Figure()
    for i, (label, curves) in enumerate(curves_by_run.items()):
        c = curves.get(kind)
        if c:
            fig.add_trace(go.Scatter(x=c[xk], y=c[yk], mode="lines", name=label, showlegend=True,
                                     line=dict(color=RUN_COLORS[i % len(RUN_COLORS)], width=2)))
    if kind in ("image_roc", "pixel_roc"):
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                                 line=dict(color="grey", dash="dot", width=1), showlegend=False))
    if not fig.data:
        fig.add_annotation(text="no data (no masks or one class only)", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
    x_max = 0.3 if kind == "pro" else 1.0
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=height,
                      margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.2, font=dict(size=10)))
    fig.update_xaxes(title=xlabel, range=[0, x_max])
    fig.update_yaxes(title=ylabel, range=[0, 1.02])
    return fig


def score_histogram(scores: Sequence[float], labels: Sequence[int], threshold: float | None = None,
                    title: str = "", height: int = 300) -> go.Figure:
    """Image scores ``[N]`` of normal (label 0) and defective (label 1) test images, overlaid,
    with the run's image threshold as a vertical line."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    edges = np.histogram_bin_edges(s, bins=min(40, max(10, len(s) // 3)))
    fig = go.Figure()
    for name, part, color in (("normal", s[~y], NORMAL_COLOR), ("defect", s[y], DEFECT_COLOR)):
        fig.add_trace(go.Histogram(x=part, name=f"{name} ({len(part)})", marker_color=color,
                                   opacity=0.6, xbins=dict(start=edges[0], end=edges[-1],
                                                           size=edges[1] - edges[0])))
    if threshold is not None:
        fig.add_vline(x=threshold, line=dict(color="black", dash="dash"),
                      annotation_text=f"threshold {threshold:.4g}", annotation_position="top")
    fig.update_layout(barmode="overlay", title=dict(text=title, font=dict(size=13)), height=height,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(title="image score")
    fig.update_yaxes(title="images")
    return fig


# ---------------------------------------------------------------------------------------------
# embeddings and ablations
# ---------------------------------------------------------------------------------------------

def embedding_scatter(xy: np.ndarray, labels: Sequence[int], defect_types: Sequence[str] | None = None,
                      splits: Sequence[str] | None = None, color_by: str = "label",
                      title: str = "", height: int = 380) -> go.Figure:
    """Scatter of projected points ``[n, 2]``.

    ``color_by="label"``: normal (blue) vs defective (red); ``"defect_type"``: one colour per
    type. Training images (``splits == "train"``) are drawn as hollow circles.
    """
    xy = np.asarray(xy)
    labels = np.asarray(labels).astype(int)
    types = np.asarray(defect_types if defect_types is not None else np.where(labels, "defect", "good"))
    splits = np.asarray(splits if splits is not None else ["test"] * len(xy))
    if color_by == "label":
        groups = [("normal", labels == 0, NORMAL_COLOR), ("defective", labels == 1, DEFECT_COLOR)]
    else:
        names = sorted(set(types.tolist()), key=lambda t: (t != "good", t))
        groups = [(t, types == t, color) for t, color in zip(names, palette(len(names)))]
    fig = go.Figure()
    for name, sel, color in groups:
        for split, symbol in (("train", "circle-open"), ("test", "circle")):
            pick = sel & (splits == split)
            if not pick.any():
                continue
            fig.add_trace(go.Scattergl(
                x=xy[pick, 0], y=xy[pick, 1], mode="markers", name=f"{name} ({split})",
                marker=dict(color=color, symbol=symbol, size=7, opacity=0.8),
                text=types[pick], hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(title=dict(text=title, font=dict(size=13)), height=height,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(font=dict(size=10)))
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None)
    return fig


AUROC_BASELINE = 0.5  # bar axes for AUROC-like metrics start at chance, not at the data's minimum


def metric_axis_start(values: Sequence[float | None], metric: str = "auroc") -> float:
    """Where a bar axis of these values starts: 0.5 (chance) for an AUROC, lower only when a
    value falls below it (then the next 0.1 below, so no bar vanishes); 0 for other metrics
    (AUPR's chance level is the defect fraction, not 0.5)."""
    if "auroc" not in metric:
        return 0.0
    baseline = AUROC_BASELINE
    low = min([v for v in values if v is not None], default=baseline)
    return baseline if low >= baseline else max(0.0, np.floor(low * 10) / 10 - 0.1)


def ablation_figure(variants: Sequence[str], ours: Mapping[str, Sequence[float]],
                    paper: Mapping[str, float | None], metric: str, title: str = "",
                    height: int = 360, reference: Mapping[str, Sequence[float]] | None = None,
                    reference_name: str = "reference results") -> go.Figure:
    """Grouped bars per variant: the paper's value, the mean of our runs (dots = single runs)
    and, when given, the committed reference results (``kit.report``).

    ``ours`` / ``reference``: ``{variant: [metric of each run]}`` (may be empty); ``paper``:
    ``{variant: value}``. The axis starts at 0.5 (chance for AUROC), and says so.
    """
    variants = list(variants)
    paper_y = [paper.get(v) for v in variants]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=variants, y=paper_y, name="paper", marker_color="#9e9e9e", offsetgroup="paper",
                         text=[f"{v:.3f}" if v is not None else "" for v in paper_y],
                         textposition="outside"))
    shown = list(paper_y)
    series = [("ours (mean)", ours, "#1f77b4", "ours", "our runs")]
    if reference:
        series.append((reference_name, reference, "#9ecae1", "reference", "reference runs"))
    for name, values, color, group, dots in series:
        mean = [float(np.mean(values[v])) if values.get(v) else None for v in variants]
        shown += mean
        fig.add_trace(go.Bar(x=variants, y=mean, name=name, marker_color=color, offsetgroup=group,
                             text=[f"{v:.3f}" if v is not None else "missing" for v in mean],
                             textposition="outside"))
        xs = [v for v in variants for _ in values.get(v, [])]
        ys = [float(x) for v in variants for x in values.get(v, [])]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=dots,
                                     marker=dict(color="black", size=6), offsetgroup=group))
    start = metric_axis_start(shown, metric)
    fig.update_layout(barmode="group", scattermode="group", title=dict(text=title, font=dict(size=14)), height=height,
                      margin=dict(l=10, r=10, t=40, b=10))
    chance = "auroc" in metric
    fig.update_yaxes(title=f"{metric} (axis from {start:g}"
                     + ((": chance)" if start == AUROC_BASELINE else ", below chance)") if chance
                        else ")"), range=[start, 1.05])
    return fig


def ablation_curve_figure(points: Mapping[str, Sequence[tuple[float, float]]],
                          paper: Sequence[tuple[float, float]], metric: str, title: str = "",
                          x_title: str = "training images", height: int = 360) -> go.Figure:
    """A paper's curve (DifferNet Fig. 7: AUROC against the training-set size) drawn as one.

    ``points``: ``{series name: [(x, value) of each run]}``, a line through the mean per x and
    a dot per run; ``paper``: the paper's points (``[]`` where its curve gives no numbers)."""
    fig = go.Figure()
    colors = ("#1f77b4", "#9ecae1")
    for (name, pts), color in zip(points.items(), colors):
        pts = sorted((float(x), float(y)) for x, y in pts)
        if not pts:
            continue
        xs = sorted({x for x, _ in pts})
        means = [float(np.mean([y for x2, y in pts if x2 == x])) for x in xs]
        fig.add_trace(go.Scatter(x=xs, y=means, mode="lines+markers", name=f"{name} (mean)",
                                 line=dict(color=color)))
        fig.add_trace(go.Scatter(x=[x for x, _ in pts], y=[y for _, y in pts], mode="markers",
                                 name=f"{name}, each run", marker=dict(color="black", size=5)))
    if paper:
        fig.add_trace(go.Scatter(x=[x for x, _ in paper], y=[y for _, y in paper], mode="markers",
                                 name="paper", marker=dict(color="#9e9e9e", size=10, symbol="square")))
    start = metric_axis_start([y for pts in points.values() for _, y in pts] + [y for _, y in paper],
                              metric)
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=height,
                      margin=dict(l=10, r=10, t=40, b=10))
    fig.update_xaxes(title=x_title, type="log")
    fig.update_yaxes(title=f"{metric} (axis from {start:g})", range=[start, 1.02])
    return fig


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None,
               masks: Sequence[np.ndarray | None] | None = None, ncols: int | None = None,
               cmap: str = "gray", vmin: float | None = None, vmax: float | None = None,
               size: float = 2.6):
    """A static matplotlib grid for notebooks: images ``[H, W]`` or ``[H, W, 3]``, masks outlined.

    Grayscale arrays use ``cmap`` with the same ``vmin``/``vmax`` for every panel (pass them
    for anomaly maps, so panels share one scale). Returns the figure.
    """
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = ncols or min(n, 5)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, image in enumerate(images):
        ax = axes.ravel()[i]
        image = np.asarray(image)
        if image.ndim == 3 and image.dtype != np.uint8:
            image = np.clip(image, 0, 1)
        ax.imshow(image, cmap=None if image.ndim == 3 else cmap, vmin=vmin, vmax=vmax)
        if masks is not None and masks[i] is not None and np.asarray(masks[i]).any():
            ax.contour(np.asarray(masks[i]).astype(float), levels=[0.5], colors="lime", linewidths=1)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    return fig


def synthetic_grid(examples, originals=None, per_row: int = 2, size: float = 2.4):
    """A static matplotlib grid of synthetic defects (``kit.synthetic.SyntheticDefect``).

    Each example takes adjacent panels: its normal image (when ``originals``, ``[3, S, S]``
    tensors, are given), the defective image, and its mask beside it (the
    soft label where one was drawn, on a fixed 0..1 scale). Titles say the shape, source and
    blend factor beta; a draw that fell only on the background is titled "normal". Returns the
    figure.
    """
    import matplotlib.pyplot as plt

    examples = list(examples)
    panels = 3 if originals is not None else 2
    per_row = max(1, min(per_row, len(examples) or 1))
    nrows = max(1, -(-len(examples) // per_row))
    fig, axes = plt.subplots(nrows, per_row * panels, figsize=(size * per_row * panels, size * nrows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, ex in enumerate(examples):
        row, col = divmod(i, per_row)
        cells = axes[row, col * panels:(col + 1) * panels]
        image = ex.image.permute(1, 2, 0).numpy()
        mask = ex.mask.numpy()
        if originals is not None:
            cells[0].imshow(np.clip(originals[i].permute(1, 2, 0).numpy(), 0, 1))
            cells[0].set_title("normal", fontsize=8)
        cells[-2].imshow(np.clip(image, 0, 1))  # no outline: it would hide a small defect
        label = f"{ex.shape} · {ex.source} · β={ex.beta:.2f}" if ex.has_defect else f"{ex.shape}: normal"
        cells[-2].set_title(label, fontsize=8)
        shown = ex.soft_label.numpy() if ex.soft_label is not None else mask
        cells[-1].imshow(shown, cmap="gray", vmin=0, vmax=1)
        cells[-1].set_title("soft label" if ex.soft_label is not None else "mask", fontsize=8)
    fig.tight_layout()
    return fig


def map_rows(images: Sequence[np.ndarray], rows: Mapping[str, tuple[Sequence[np.ndarray], MapScale | None]],
             titles: Sequence[str] | None = None, masks: Sequence[np.ndarray | None] | None = None,
             size: float = 2.2):
    """A static matplotlib grid for notebooks: one column per image, the images (``[H, W, 3]``,
    masks outlined) on top and one row per entry of ``rows``: ``label -> (panels, scale)``, each
    panel an ``[H, W]`` map drawn on the row's :class:`MapScale` (one scale for the whole row,
    never per image) or an ``[H, W, 3]`` image (scale None, e.g. a reconstruction). Returns the
    figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(len(rows) + 1, n, figsize=(size * n, size * (len(rows) + 1)), squeeze=False)
    for j, image in enumerate(images):
        axes[0, j].imshow(np.clip(np.asarray(image), 0, 1))
        if masks is not None and masks[j] is not None and np.asarray(masks[j]).any():
            axes[0, j].contour(np.asarray(masks[j]).astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
        if titles is not None:
            axes[0, j].set_title(titles[j], fontsize=9)
        for r, (panels, scale) in enumerate(rows.values(), start=1):
            panel = np.asarray(panels[j])
            if scale is None:
                axes[r, j].imshow(np.clip(panel, 0, 1))
            else:
                axes[r, j].imshow(panel, cmap=MAP_COLORS.lower(), vmin=scale.vmin, vmax=scale.vmax)
    for r, label in enumerate(["image + mask", *rows]):
        axes[r, 0].set_ylabel(label, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def cost_accuracy_figure(rows: Sequence[Mapping], metrics: Sequence[str] = ("image_auroc", "pixel_auroc"),
                         cost: str = "infer_ms_per_image", cost_label: str = "inference ms / image (log)"):
    """A static matplotlib figure for notebooks: one panel per metric, each method a point at
    (its mean ``cost``, its mean metric), labelled with its name. ``rows`` are
    :func:`kit.report.methods_table` rows (per-seed lists under each key); a method without a
    value is left out of that panel. The AUROC axis starts at chance (:func:`metric_axis_start`).
    Returns the figure."""
    import matplotlib.pyplot as plt

    from kit.report import WARM_NOTES, warm_share

    mean = lambda vs: (lambda xs: sum(xs) / len(xs) if xs else None)([v for v in vs if v is not None])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        # a warm time (features from the feature cache) says so at its point, as the tables do
        share_key = WARM_NOTES[cost][1] if cost in WARM_NOTES else None
        points = [(row["method"] + (" (warm)" if share_key and warm_share(row, share_key) else ""),
                   mean(row[cost]), mean(row[metric])) for row in rows]
        points = [p for p in points if p[1] is not None and p[2] is not None]
        for name, x, y in points:
            ax.scatter([x], [y], s=30)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(cost_label)
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_ylim(metric_axis_start([p[2] for p in points], metric), 1.0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the report's plots
# (matplotlib on an Axes; kit.report.draw_plots makes the figures and writes docs/report/*.png)

def _report_bars(ax, x, values: list[float | None], width: float, start: float, **style) -> None:
    """Bars from the axis start (a missing value draws nothing)."""
    ax.bar(x, [(v - start) if v is not None else 0.0 for v in values], width, bottom=start, **style)


def report_methods_bars(ax, rows: Sequence[Mapping]) -> None:
    """Image and pixel AUROC per method (:func:`kit.report.methods_table` rows)."""
    from kit.report import METRIC_NAMES, mean_known

    keys = (("image_auroc", "#4c72b0"), ("pixel_auroc", "#dd8452"))
    start = metric_axis_start([mean_known(row[k]) for row in rows for k, _ in keys])
    x = np.arange(len(rows))
    for i, (key, color) in enumerate(keys):
        _report_bars(ax, x + (i - 0.5) * 0.38, [mean_known(row[key]) for row in rows], 0.38, start,
                     color=color, label=METRIC_NAMES[key])
    ax.set_xticks(x, [row["method"] for row in rows], fontsize=8)
    _report_auroc_axis(ax, start)


def report_defect_bars(ax, rows: Sequence[Mapping], types: Sequence[Mapping],
                       metric: str = "pixel_auroc") -> None:
    """``metric`` per method, one bar per defect type and one for all types pooled
    (:func:`kit.report.defect_rows`)."""
    from kit.report import METRIC_NAMES

    keys = ["all"] + [t["name"] for t in types]
    values = {k: [row["all"][metric] if k == "all" else row["types"][k][metric] for row in rows]
              for k in keys}
    start = metric_axis_start([v for vs in values.values() for v in vs], metric)
    x = np.arange(len(rows))
    width = 0.84 / len(keys)
    colors = ["#222222", *palette(len(keys) - 1)]
    for i, (key, color) in enumerate(zip(keys, colors)):
        _report_bars(ax, x + (i - (len(keys) - 1) / 2) * width, values[key], width, start,
                     color=color, label="all types" if key == "all" else key)
    ax.set_xticks(x, [row["method"] for row in rows], fontsize=8)
    _report_auroc_axis(ax, start, METRIC_NAMES.get(metric, metric), metric)


def report_speed_bars(ax, rows: Sequence[Mapping], target: float) -> None:
    """Where each method's ``predict`` time goes (``docs/results/speed.json`` rows with
    ``backbones_ms``): ms inside backbone forwards and the method's own ms beyond them, one
    horizontal bar per method, with a tick at ``target`` times its bare backbone forward and,
    where counted, a diamond at its FLOPs run at the bare forward's FLOPs per ms."""
    rows = sorted(rows, key=lambda r: r["backbones_ms"] * r["backbones_ratio"])
    y = np.arange(len(rows))
    inside = [r["backbones_ms"] for r in rows]
    own = [r["backbones_ms"] * (r["backbones_ratio"] - 1) for r in rows]
    ax.barh(y, inside, 0.6, color="#8c8c8c", label="inside backbone forwards")
    ax.barh(y, own, 0.6, left=inside, color="#4c72b0", label="the method's own")
    ax.plot([target * r["bare_ms"] for r in rows], y, "|", color="#d62728", markersize=14,
            markeredgewidth=2, label=f"{target:g}x one bare forward")
    counted = [(i, r["flop_ratio"] * r["bare_ms"]) for i, r in enumerate(rows)
               if r.get("flop_ratio") is not None]
    if counted:  # where predict would end if all its operations ran at the bare forward's rate
        ax.plot([ms for _, ms in counted], [i for i, _ in counted], "D", color="black",
                markersize=4, label="its FLOPs at the bare forward's rate")
    ax.set_yticks(y, [f"{r['method']} ({r['backbone_forwards']} fwd)" for r in rows], fontsize=8)
    ax.set_xlim(0, None)  # linear from 0: a bar's length is its time
    ax.set_xlabel("ms per image, batch 1", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def palette(n: int) -> list[str]:
    """``n`` colours for categories (defect types), repeating after ten; red comes second so
    that, after "good" in blue, the first defect type reads as a defect."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
              "#7f7f7f", "#bcbd22", "#17becf"]
    return [colors[i % len(colors)] for i in range(n)]


def report_ablation_bars(ax, rows: Sequence[Mapping], metric: str) -> None:
    """The paper's value and ours per variant (:func:`kit.report.ablation_rows` rows)."""
    from kit.report import METRIC_NAMES

    start = metric_axis_start([row[k] for row in rows for k in ("paper", "ours")], metric)
    x = np.arange(len(rows))
    _report_bars(ax, x - 0.19, [row["paper"] for row in rows], 0.38, start, color="#bbbbbb", label="paper")
    _report_bars(ax, x + 0.19, [row["ours"] for row in rows], 0.38, start, color="#4c72b0", label="ours")
    ax.set_xticks(x, [row["variant"] for row in rows], fontsize=8)
    _report_auroc_axis(ax, start, METRIC_NAMES.get(metric, metric), metric)


def report_ablation_curve(ax, rows: Sequence[Mapping], metric: str) -> None:
    """Ours (each seed, and the mean) and the paper's values against the training-set size."""
    from collections import defaultdict

    from kit.report import METRIC_NAMES, paper_curve_points

    points = sorted((n, v) for row in rows for n, v in zip(row["n_train"], row["values"])
                    if n is not None and v is not None)
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], "o", color="#4c72b0", alpha=0.5,
                label="ours, each seed")
        means = defaultdict(list)
        for n, v in points:
            means[n].append(v)
        xs = sorted(means)
        ax.plot(xs, [sum(means[n]) / len(means[n]) for n in xs], "-", color="#4c72b0",
                label="ours, mean")
        paper = paper_curve_points({row["variant"]: row["paper"] for row in rows},
                                   {row["variant"]: row["n_train"] for row in rows})
        if paper:  # a variant's paper value at its runs' training-set size
            ax.plot([p[0] for p in paper], [p[1] for p in paper], "s", color="#888888", label="paper")
        ax.set_xscale("log", base=2)
    ax.set_xlabel("training images")
    _report_auroc_axis(ax, metric_axis_start([v for _, v in points] + [r["paper"] for r in rows], metric),
                       METRIC_NAMES.get(metric, metric), metric)


def _report_auroc_axis(ax, start: float, label: str = "AUROC", metric: str = "auroc") -> None:
    ax.set_ylim(start, 1.0)
    if "auroc" in metric:  # chance is 0.5 for an AUROC only (AUPR's is the defect fraction)
        ax.axhline(AUROC_BASELINE, color="black", linewidth=0.6)
        ax.set_ylabel(f"{label}\n(axis from {start:g}; line at {AUROC_BASELINE}: chance)", fontsize=8)
    else:
        ax.set_ylabel(f"{label} (axis from {start:g})", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # never over a bar
