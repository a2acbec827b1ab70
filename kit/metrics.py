"""Evaluation metrics for unsupervised visual defect detection.

Image level: AUROC and F1-max. Pixel level: AUROC, AUPR (average precision) and AUPRO, the
area under the per-region-overlap curve up to a false-positive rate of 0.3, divided by 0.3
(the MVTec AD protocol). Also: decision thresholds chosen from normal data only, confusion
counts at a threshold, and downsampled curve points for plots.

Every metric here ranks the *raw* scores. Nothing in this module rescales scores (no sigmoid,
no min-max). A monotone squash cannot change a rank metric in exact arithmetic, but in floating
point a sigmoid maps every large score to exactly 1.0; the ties it creates destroy the ranking
(anomalib's sigmoid-normalised PaDiM on MTD reported image AUROC 0.754 instead of 0.960).

Conventions
-----------
- ``scores`` ``[N]`` (one per image) and ``maps`` ``[N, H, W]`` (one per pixel): real numbers,
  larger = more anomalous, any range. numpy arrays or torch tensors (CPU or not, with or
  without autograd) are accepted.
- ``labels`` ``[N]`` and ``masks`` ``[N, H, W]``: bool or 0/1, True = anomalous.
- ``include`` ``[N]`` bool: images that count for pixel metrics. The caller sets it to False for
  anomalous images whose mask is empty (an unannotated defect: its pixels are neither reliably
  normal nor a region). Normal images have all-zero masks and are included.
- A metric that the data cannot define (only one class present) is ``None``, never NaN, so
  results stay JSON-serialisable. Every returned number is a plain Python ``float``/``int``.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

__all__ = [
    "image_auroc",
    "pixel_metrics",
    "aupro",
    "pro_curve",
    "f1_max",
    "threshold_from_normal",
    "scores_at_threshold",
    "curves",
    "evaluate",
    "by_defect_type",
    "DEFAULT_FPR_LIMIT",
]

#: Upper end of the FPR range over which the PRO curve is integrated (MVTec AD protocol).
DEFAULT_FPR_LIMIT = 0.3

# 8-connectivity: pixels touching by a corner belong to the same defect region, as in the
# MVTec AD evaluation code.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------

def _as_numpy(x: Any) -> np.ndarray:
    """Any array-like (numpy, torch tensor, list) -> numpy array, without copying when possible."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        # torch tensor: leave autograd and the GPU; numpy has no bfloat16
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
    return np.asarray(x)


def _score_dtype(a: np.ndarray) -> np.dtype:
    """Float dtype that holds every value of ``a`` exactly.

    float16/uint8/bool -> float32, float32 -> float32, float64/int32/int64 -> float64. Keeping
    float32 maps in float32 halves the memory of the full MTD test set (38M pixels), and never
    going *below* the input precision means no two distinct scores become tied.
    """
    if a.dtype.kind not in "biuf":
        raise ValueError(f"scores must be real numbers; got dtype {a.dtype}")
    return np.result_type(a.dtype, np.float32)


def _check_finite(a: np.ndarray, name: str) -> None:
    # NaN has no place in a ranking (it compares false with everything), and inf usually means
    # a numerical failure upstream: fail loudly instead of returning a silently wrong number.
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    s = _as_numpy(scores)
    s = s.astype(_score_dtype(s), copy=False)
    if s.size == 0:
        raise ValueError(f"{name} is empty")
    _check_finite(s, name)
    return s


def _as_binary(labels: Any, name: str) -> np.ndarray:
    """bool or 0/1 array -> bool array; anything else (e.g. 0/255 masks) is an error."""
    a = _as_numpy(labels)
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "biuf" or not ((a == 0) | (a == 1)).all():
        found = np.unique(a)[:6] if a.dtype.kind in "biuf" else a.dtype
        raise ValueError(f"{name} must be boolean or 0/1; found {found}")
    return a.astype(bool)


def _paired(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """scores and labels of one shape -> flattened ``(scores [M], labels [M] bool)``."""
    s = _as_scores(scores)
    y = _as_binary(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores have shape {s.shape} but labels have shape {y.shape}")
    return s.reshape(-1), y.reshape(-1)


def _as_include(include: Any, n: int) -> np.ndarray:
    if include is None:
        return np.ones(n, dtype=bool)
    inc = _as_binary(include, "include").reshape(-1)
    if inc.shape != (n,):
        raise ValueError(f"include must have shape [{n}]; got {inc.shape}")
    return inc


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any()) and not bool(y.all())


# ----------------------------------------------------------------------------------------------
# the shared ranking
# ----------------------------------------------------------------------------------------------

class _Ranking:
    """Confusion counts of a binary ranking at every threshold where a curve can bend.

    Built from ``pos [P]`` (scores of anomalous items), ``neg [Q]`` (scores of normal items) and
    optional ``weight [P]`` per anomalous item (PRO: 1/|region|). ``neg`` is sorted in place.

    The ROC, PR and PRO curves at *every* distinct threshold are piecewise linear, and between
    two consecutive distinct anomalous scores ``u_i > u_{i+1}`` only normal items cross the
    threshold: TP and PRO stay constant while FP grows, so those points lie on one horizontal
    segment and trapezoid areas do not need them (and AP gets no recall increment from them).
    Hence, for each distinct anomalous score ``u`` (descending) we keep two points:

    - "gt": threshold just above ``u`` (items with score > u are flagged),
    - "ge": threshold exactly ``u`` (items with score >= u are flagged; ties cross together),

    plus the origin (nothing flagged) and the end (everything flagged). This is exact, costs
    one sort of each class (O(n log n) overall) and never materialises a permutation or a
    cumulative sum over all pixels, which matters at 38M pixels.
    """

    def __init__(self, pos: np.ndarray, neg: np.ndarray, weight: Optional[np.ndarray] = None,
                 sorted_neg: Sequence[np.ndarray] = ()):
        # sorted_neg: more normal scores, each array already ascending (shared by several
        # rankings, as by_defect_type's normal images are, so they are sorted once)
        self.n_pos = int(pos.size)
        self.n_neg = int(neg.size) + sum(int(n.size) for n in sorted_neg)
        order = np.argsort(pos)[::-1]  # descending; order inside a tie is irrelevant (see below)
        pos = pos[order]
        w = np.ones(self.n_pos) if weight is None else np.asarray(weight, dtype=np.float64)[order]
        # cum_w[k] = total weight of the k highest-scoring anomalous items
        cum_w = np.concatenate(([0.0], np.cumsum(w)))
        # runs of tied anomalous scores: [first, last] indices in the descending order; only
        # run boundaries are used, so a tie never splits
        last = np.flatnonzero(pos[1:] != pos[:-1])
        last = np.append(last, self.n_pos - 1) if self.n_pos else last
        first = np.concatenate(([0], last[:-1] + 1)).astype(np.int64) if self.n_pos else last
        self.u = pos[last]  # [K] distinct anomalous scores, descending
        self.tp_gt = first.astype(np.float64)
        self.tp_ge = (last + 1).astype(np.float64)
        self.w_gt = cum_w[first]
        self.w_ge = cum_w[last + 1]
        self.w_total = float(cum_w[-1])
        neg.sort()  # ascending; count of normals >= u is Q - (number of normals < u)
        self._neg = neg
        parts = [neg, *sorted_neg]
        self.fp_gt = (self.n_neg - sum(np.searchsorted(n, self.u, side="right") for n in parts)
                      ).astype(np.float64)
        self.fp_ge = (self.n_neg - sum(np.searchsorted(n, self.u, side="left") for n in parts)
                      ).astype(np.float64)

    def sorted_normals(self) -> np.ndarray:
        """The normal scores given as ``neg``, ascending (not ``sorted_neg``)."""
        return self._neg

    @property
    def defined(self) -> bool:
        return self.n_pos > 0 and self.n_neg > 0

    def _corners(self, gt: np.ndarray, ge: np.ndarray, start: float, end: float) -> np.ndarray:
        """Interleave to ``[start, gt_0, ge_0, gt_1, ge_1, ..., end]`` (length 2K+2)."""
        out = np.empty(2 * gt.size + 2, dtype=np.float64)
        out[0], out[-1] = start, end
        out[1:-1:2] = gt
        out[2:-1:2] = ge
        return out

    def fpr(self) -> np.ndarray:
        return self._corners(self.fp_gt, self.fp_ge, 0.0, self.n_neg) / self.n_neg

    def tpr(self) -> np.ndarray:
        return self._corners(self.tp_gt, self.tp_ge, 0.0, self.n_pos) / self.n_pos

    def pro(self, n_regions: int) -> np.ndarray:
        pro = self._corners(self.w_gt, self.w_ge, 0.0, self.w_total) / n_regions
        # cumulative float sums of 1/|r| can overshoot 1 by a rounding error
        return np.minimum(pro, 1.0)

    def auroc(self) -> float:
        return _trapezoid(self.fpr(), self.tpr())

    def average_precision(self) -> float:
        # sklearn's definition: sum over thresholds of (recall increment) * precision
        precision = self.tp_ge / (self.tp_ge + self.fp_ge)  # tp_ge >= 1, never 0/0
        return float(np.sum((self.tp_ge - self.tp_gt) / self.n_pos * precision))

    def f1_max(self) -> tuple[float, float]:
        # F1 = 2TP / (2TP + FP + FN) = 2TP / (TP + FP + P). Lowering the threshold below an
        # anomalous score only adds false positives until the next one, so the best F1 is at
        # one of the "ge" points.
        f1 = 2.0 * self.tp_ge / (self.tp_ge + self.fp_ge + self.n_pos)
        best = int(np.argmax(f1))  # first maximum = highest threshold among equals
        return float(f1[best]), float(self.u[best])


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """Area under the polyline through ``(x[k], y[k])``; x nondecreasing."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _truncate(x: np.ndarray, y: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut a curve (x nondecreasing from 0) at ``x = limit``, adding the interpolated point."""
    i = int(np.searchsorted(x, limit, side="right"))  # x[:i] <= limit, and i >= 1 as x[0] = 0
    xs, ys = x[:i], y[:i]
    if i < x.size and xs[-1] < limit:
        # x[i] > limit > x[i-1]: linear interpolation on the segment that crosses the limit
        t = (limit - x[i - 1]) / (x[i] - x[i - 1])
        xs = np.append(xs, limit)
        ys = np.append(ys, y[i - 1] + t * (y[i] - y[i - 1]))
    return xs, ys


def _pixel_ranking(maps: Any, masks: Any, include: Any,
                   sorted_neg: Sequence[np.ndarray] = ()) -> tuple[_Ranking, int]:
    """Rank the pixels of the included images; returns ``(ranking, number of regions)``
    (:func:`_pixel_arrays` ranked)."""
    pos, neg, weight, n_regions = _pixel_arrays(maps, masks, include)
    return _Ranking(pos, neg, weight, sorted_neg), n_regions


def _pixel_arrays(maps: Any, masks: Any, include: Any
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(anomalous scores, normal scores, PRO weight per anomalous pixel, number of regions)``
    of the pixels of the included images.

    maps ``[N, H, W]``, masks ``[N, H, W]`` bool or 0/1, include ``[N]`` bool or None (= all).
    Works image by image into preallocated buffers: one copy of the included normal scores
    (float32 maps: 4 bytes per pixel) plus per-anomalous-pixel arrays, no full-size temporaries.
    """
    m = _as_numpy(maps)
    g = _as_binary(masks, "masks")
    if m.ndim != 3:
        raise ValueError(f"maps must have shape [N, H, W]; got {m.shape}")
    if g.shape != m.shape:
        raise ValueError(f"maps have shape {m.shape} but masks have shape {g.shape}")
    inc = _as_include(include, m.shape[0])
    dtype = _score_dtype(m)
    idx = np.flatnonzero(inc)
    pos_counts = [int(np.count_nonzero(g[i])) for i in idx]
    n_pos = sum(pos_counts)
    n_neg = idx.size * m.shape[1] * m.shape[2] - n_pos
    pos = np.empty(n_pos, dtype=dtype)
    neg = np.empty(n_neg, dtype=dtype)
    weight = np.empty(n_pos, dtype=np.float64)
    n_regions = 0
    at_pos = at_neg = 0
    for i, k in zip(idx, pos_counts):
        score, mask = m[i], g[i]
        _check_finite(score, f"maps[{i}]")
        neg[at_neg:at_neg + score.size - k] = score[~mask]
        at_neg += score.size - k
        if k:
            region, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
            region_of_pixel = region[mask]  # same row-major order as score[mask]
            size = np.bincount(region_of_pixel)
            pos[at_pos:at_pos + k] = score[mask]
            # each region contributes 1 (before dividing by the region count) when all of
            # its pixels are flagged, whatever its size
            weight[at_pos:at_pos + k] = 1.0 / size[region_of_pixel]
            at_pos += k
            n_regions += n
    return pos, neg, weight, n_regions


@dataclass
class PixelRankings:
    """The pixel rankings behind every pixel metric of one set of maps, each pixel sorted once:
    all included images (``overall``) and each defect type with the normal images
    (``by_type``), each ``(ranking, number of regions)``. Made by :func:`pixel_rankings`;
    :func:`evaluate`, :func:`by_defect_type` and :func:`curves` take it (``ranked``) instead of
    sorting the same pixels again."""

    overall: tuple[_Ranking, int]
    by_type: dict[str, tuple[_Ranking, int]]


def pixel_rankings(maps: Any, masks: Any, include: Any, labels: Any,
                   defect_types: Any) -> PixelRankings:
    """:class:`PixelRankings` of maps ``[N, H, W]``, masks ``[N, H, W]`` bool, include ``[N]``
    bool (None = every image), labels ``[N]`` bool and defect_types ``[N]`` str.

    The normal images' pixels are sorted once and shared by every ranking; each type's
    defect images are sorted once and shared by the overall ranking, which then sorts only the
    anomalous pixels: about half the sorting of ranking each set on its own (38M pixels on
    MTD's test split). The counts, hence every metric, are those of separate rankings.
    """
    m = _as_numpy(maps)
    g = _as_binary(masks, "masks")
    y = _as_binary(labels, "labels").reshape(-1)
    types = np.asarray(defect_types, dtype=str).reshape(-1)
    if not (m.shape[0] == y.size == types.size):
        raise ValueError(f"{m.shape[0]} maps, {y.size} labels and {types.size} defect types")
    inc = _as_include(include, y.size)
    kinds = sorted(set(types[y]))
    normal_pos, normal_neg, _, _ = _pixel_arrays(m, g, inc & ~y)
    if normal_pos.size:  # a normal image with mask pixels: each set ranks on its own
        return PixelRankings(_pixel_ranking(m, g, inc),
                             {t: _pixel_ranking(m, g, inc & (((types == t) & y) | ~y)) for t in kinds})
    normal_neg.sort()
    by_type: dict[str, tuple[_Ranking, int]] = {}
    neg_parts = []
    for t in kinds:
        pos, neg, weight, n_regions = _pixel_arrays(m, g, inc & y & (types == t))
        ranking = _Ranking(pos, neg, weight, [normal_neg])  # sorts this type's normal pixels
        by_type[t] = (ranking, n_regions)
        neg_parts.append(ranking.sorted_normals())
    # the anomalous pixels again, in image order as a ranking of every image has them, so the
    # PRO weights add up in the same order (ties); their normal pixels are the types' sorted ones
    pos, _, weight, n_regions = _pixel_arrays(m, g, inc & y)
    overall = _Ranking(pos, np.empty(0, normal_neg.dtype), weight, [normal_neg, *neg_parts])
    return PixelRankings((overall, n_regions), by_type)


def _check_fpr_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    return fpr_limit


def _aupro_from(ranking: _Ranking, n_regions: int, fpr_limit: float) -> float:
    fpr, pro = _truncate(ranking.fpr(), ranking.pro(n_regions), fpr_limit)
    # clip: trapezoid sums of values <= 1 can exceed fpr_limit by a rounding error
    return min(max(_trapezoid(fpr, pro) / fpr_limit, 0.0), 1.0)


# ----------------------------------------------------------------------------------------------
# public metrics
# ----------------------------------------------------------------------------------------------

def image_auroc(scores: Any, labels: Any) -> Optional[float]:
    """Area under the ROC curve of image scores.

    scores ``[N]`` raw scores of any range (ranked as they are, never squashed); labels ``[N]``
    bool or 0/1, True = anomalous. Returns None when only one class is present.
    """
    s, y = _paired(scores, labels)
    if not _both_classes(y):
        return None
    return float(roc_auc_score(y, s))


def _metrics_of(ranking: _Ranking, n_regions: int, fpr_limit: float) -> dict[str, Optional[float]]:
    if not ranking.defined:
        return {"pixel_auroc": None, "pixel_aupr": None, "aupro": None}
    return {"pixel_auroc": ranking.auroc(), "pixel_aupr": ranking.average_precision(),
            "aupro": _aupro_from(ranking, n_regions, fpr_limit)}


def pixel_metrics(maps: Any, masks: Any, include: Any = None,
                  fpr_limit: float = DEFAULT_FPR_LIMIT) -> dict[str, Optional[float]]:
    """Pixel AUROC, pixel AUPR (average precision) and AUPRO, from one shared ranking.

    maps ``[N, H, W]`` anomaly maps (raw values), masks ``[N, H, W]`` bool ground truth,
    include ``[N]`` bool (None = every image). Pixels of excluded images are ignored entirely.
    Returns ``{"pixel_auroc", "pixel_aupr", "aupro"}``; all three None when the included pixels
    have no anomalous pixel or no normal pixel.

    The full MTD test set at 256x256 (583 images, 38M float32 pixels, 2.2M anomalous) takes
    about 2 s and 370 MB on top of the maps (benchmarks/bench_aupro.py); sklearn needs ~95 s
    and ~2.4 GB for AUROC + AP alone.
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    return _metrics_of(*_pixel_ranking(maps, masks, include), fpr_limit)


def per_image_pixel_auroc(maps: Any, masks: Any, include: Any = None) -> Optional[float]:
    """The mean over defective images of each image's own pixel AUROC: how well a map ranks an
    image's defect pixels above the rest of *that* image, whatever its level against other
    images. Pooled pixel AUROC (:func:`pixel_metrics`) also asks that levels agree across
    images; a map that localises well inside each image but whose level drifts from image to
    image scores high here and low there.

    maps ``[N, H, W]``, masks ``[N, H, W]``, include ``[N]`` (None = every image). None when no
    included image has both defect and normal pixels.
    """
    m = _as_numpy(maps)
    g = _as_binary(masks, "masks")
    if g.shape != m.shape or m.ndim != 3:
        raise ValueError(f"maps {m.shape} and masks {g.shape} must both be [N, H, W]")
    inc = _as_include(include, m.shape[0])
    values = []
    for i in np.flatnonzero(inc):
        if g[i].any() and not g[i].all():
            ranking, _ = _pixel_ranking(m[i:i + 1], g[i:i + 1], None)
            values.append(ranking.auroc())
    return float(np.mean(values)) if values else None


def pro_curve(maps: Any, masks: Any, include: Any = None,
              fpr_limit: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve: ``(fpr [K], pro [K])``, float64, starting at (0, 0).

    maps ``[N, H, W]``, masks ``[N, H, W]`` bool, include ``[N]`` bool (None = all images).
    Regions are the 8-connected components of each included mask. At a threshold ``t``
    (pixel flagged when score >= t): PRO = mean over all regions of the whole set of the
    fraction of the region's pixels flagged; FPR = fraction of normal pixels (mask == 0 in
    included images) flagged. Tied scores cross a threshold together.

    Points are returned at every threshold where the curve can bend (points on horizontal
    stretches are collinear and omitted), fpr nondecreasing, ending at (1, 1). With
    ``fpr_limit`` the curve is cut at that FPR, the last point interpolated exactly there.
    Raises ValueError when there is no anomalous or no normal pixel (the curve is undefined).
    """
    ranking, n_regions = _pixel_ranking(maps, masks, include)
    if not ranking.defined:
        raise ValueError("PRO curve undefined: the included images need both anomalous "
                         "and normal pixels")
    fpr, pro = ranking.fpr(), ranking.pro(n_regions)
    if fpr_limit is not None:
        fpr, pro = _truncate(fpr, pro, _check_fpr_limit(fpr_limit))
    return fpr, pro


def aupro(maps: Any, masks: Any, include: Any = None,
          fpr_limit: float = DEFAULT_FPR_LIMIT) -> Optional[float]:
    """Normalised area under the PRO curve from FPR 0 to ``fpr_limit``, in [0, 1].

    maps ``[N, H, W]``, masks ``[N, H, W]`` bool, include ``[N]`` bool (None = all images).
    The curve of :func:`pro_curve`, integrated by the trapezoid rule up to ``fpr_limit``
    (interpolated exactly there) and divided by ``fpr_limit``: 1.0 for a map that ranks every
    anomalous pixel above every normal pixel. None when there is no anomalous or no normal pixel.
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    ranking, n_regions = _pixel_ranking(maps, masks, include)
    if not ranking.defined:
        return None
    return _aupro_from(ranking, n_regions, fpr_limit)


def f1_max(scores: Any, labels: Any) -> tuple[Optional[float], Optional[float]]:
    """Best F1 over all thresholds, and the threshold reaching it: ``(f1, threshold)``.

    scores and labels of the same shape: ``[N]`` image scores and labels, or ``[N, H, W]`` maps
    and masks for the pixel level (use ``maps[include]``, ``masks[include]`` to exclude images).
    An item counts as anomalous when ``score >= threshold``; among equally good thresholds the
    highest is returned. ``(None, None)`` when no item is anomalous.

    The threshold is chosen *on the evaluated data*: report F1-max as a metric, never use its
    threshold for decisions (see :func:`threshold_from_normal`).
    """
    s, y = _paired(scores, labels)
    if not y.any():
        return None, None
    return _Ranking(s[y], s[~y]).f1_max()


def threshold_from_normal(normal_scores: Any, quantile: float = 0.99) -> float:
    """Decision threshold: the ``quantile`` of anomaly scores of normal data, ``[M]`` (any shape).

    Use scores of normal images that the method did not train on when possible (a held-out
    part of the train split), otherwise the training scores. Thresholds must never be chosen
    on the test split: a threshold tuned on test labels makes every thresholded number
    (precision, recall, F1) optimistic and meaningless. With ``quantile=0.99`` about 1% of
    normal items are flagged (linear interpolation between order statistics).
    """
    q = float(quantile)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1]; got {quantile}")
    s = _as_scores(normal_scores, "normal_scores").reshape(-1)
    return float(np.quantile(s.astype(np.float64), q))


def scores_at_threshold(scores: Any, labels: Any, threshold: float) -> dict[str, Any]:
    """Confusion counts and precision/recall/F1 when ``score >= threshold`` means anomalous.

    scores and labels of the same shape (``[N]`` or ``[N, H, W]``). Returns
    ``{"precision", "recall", "f1", "tp", "fp", "fn", "tn"}``; a ratio whose denominator is
    zero is defined as 0.0 (no warning).
    """
    s, y = _paired(scores, labels)
    flagged = s >= threshold
    tp = int(np.count_nonzero(flagged & y))
    fp = int(np.count_nonzero(flagged & ~y))
    fn = int(np.count_nonzero(~flagged & y))
    tn = int(y.size - tp - fp - fn)
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


# ----------------------------------------------------------------------------------------------
# curves for plots and the one-call summary
# ----------------------------------------------------------------------------------------------

def _downsample(max_points: int, *arrays: np.ndarray) -> list[list[float]]:
    """Keep at most ``max_points`` evenly spaced indices, always the first and the last."""
    n = arrays[0].size
    if n > max_points:
        keep = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))
        arrays = tuple(a[keep] for a in arrays)
    return [np.asarray(a, dtype=np.float64).tolist() for a in arrays]


def curves(scores: Any, labels: Any, maps: Any = None, masks: Any = None, include: Any = None,
           max_points: int = 400, fpr_limit: float = DEFAULT_FPR_LIMIT,
           ranked: Optional[PixelRankings] = None) -> dict[str, Any]:
    """Curve points for plots, as JSON-serialisable lists (for plots only, not for metrics).

    scores ``[N]``, labels ``[N]``; optional maps/masks ``[N, H, W]`` and include ``[N]``.
    Returns::

        {"image_roc": {"fpr": [...], "tpr": [...]},
         "image_pr": {"recall": [...], "precision": [...]},       # recall ascending
         "pixel_roc": {"fpr": [...], "tpr": [...]},
         "pro": {"fpr": [...], "pro": [...], "fpr_limit": 0.3}}   # cut at fpr_limit

    An entry is None when its data is absent or has one class only. Each curve is downsampled
    to at most ``max_points`` points, keeping both endpoints. ``ranked``: :func:`pixel_rankings`
    of the same maps, masks and include, when the caller has it.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2; got {max_points}")
    fpr_limit = _check_fpr_limit(fpr_limit)
    out: dict[str, Any] = {"image_roc": None, "image_pr": None, "pixel_roc": None, "pro": None}
    s, y = _paired(scores, labels)
    if _both_classes(y):
        fpr, tpr, _ = roc_curve(y, s)
        fpr_l, tpr_l = _downsample(max_points, fpr, tpr)
        out["image_roc"] = {"fpr": fpr_l, "tpr": tpr_l}
        precision, recall, _ = precision_recall_curve(y, s)
        rec_l, prec_l = _downsample(max_points, recall[::-1], precision[::-1])
        out["image_pr"] = {"recall": rec_l, "precision": prec_l}
    if maps is not None and masks is not None:
        ranking, n_regions = ranked.overall if ranked else _pixel_ranking(maps, masks, include)
        if ranking.defined:
            fpr = ranking.fpr()
            fpr_l, tpr_l = _downsample(max_points, fpr, ranking.tpr())
            out["pixel_roc"] = {"fpr": fpr_l, "tpr": tpr_l}
            fpr_c, pro_c = _truncate(fpr, ranking.pro(n_regions), fpr_limit)
            fpr_l, pro_l = _downsample(max_points, fpr_c, pro_c)
            out["pro"] = {"fpr": fpr_l, "pro": pro_l, "fpr_limit": fpr_limit}
    return out


def evaluate(scores: Any, labels: Any, maps: Any = None, masks: Any = None, include: Any = None,
             threshold: Optional[float] = None,
             fpr_limit: float = DEFAULT_FPR_LIMIT,
             ranked: Optional[PixelRankings] = None) -> dict[str, Any]:
    """All metrics of one test run, as plain Python values (JSON-serialisable).

    scores ``[N]`` image scores, labels ``[N]`` bool; optional maps ``[N, H, W]``, masks
    ``[N, H, W]`` bool, include ``[N]`` bool (None = every image counts for pixel metrics);
    threshold: a decision threshold chosen on normal data (:func:`threshold_from_normal`);
    ranked: :func:`pixel_rankings` of the same maps, masks and include, when the caller has it.

    Returns ``image_auroc``, ``f1_max``, ``pixel_auroc``, ``pixel_aupr``, ``aupro`` (None when
    undefined: one class only, or no maps/masks) and, when a threshold is given,
    ``threshold``, ``precision``, ``recall``, ``f1`` at it.
    """
    s, y = _paired(scores, labels)
    out: dict[str, Any] = {"image_auroc": image_auroc(s, y), "f1_max": f1_max(s, y)[0]}
    if masks is not None and maps is None:
        raise ValueError("masks were given without maps")
    pixel: dict[str, Optional[float]] = {"pixel_auroc": None, "pixel_aupr": None, "aupro": None}
    if maps is not None and masks is not None:
        n_maps = len(_as_numpy(maps))
        if n_maps != s.size:
            raise ValueError(f"{s.size} scores but {n_maps} maps")
        pixel = (pixel_metrics(maps, masks, include, fpr_limit=fpr_limit) if ranked is None
                 else _metrics_of(*ranked.overall, _check_fpr_limit(fpr_limit)))
    out.update(pixel)
    if threshold is not None:
        at = scores_at_threshold(s, y, threshold)
        out.update(threshold=float(threshold), precision=at["precision"],
                   recall=at["recall"], f1=at["f1"])
    return out


def by_defect_type(scores: Any, labels: Any, defect_types: Any, maps: Any = None,
                   masks: Any = None, include: Any = None,
                   fpr_limit: float = DEFAULT_FPR_LIMIT,
                   ranked: Optional[PixelRankings] = None) -> dict[str, dict[str, Any]]:
    """The metrics of each defect type against the normal images, to see where a method fails.

    scores ``[N]``, labels ``[N]`` bool, defect_types ``[N]`` str (any value for normal
    images); optional maps ``[N, H, W]``, masks ``[N, H, W]`` bool and include ``[N]`` bool as in
    :func:`evaluate`. Each type ``t`` is scored on its own images plus every normal image, as
    the MVTec AD per-category tables are: ``image_auroc`` (t vs normal), ``pixel_auroc``,
    ``pixel_aupr``, ``aupro``, and ``n`` (images of t), ``pixel_share`` (t's fraction of every
    included anomalous pixel: a pooled pixel AUROC is dominated by the types with large masks).
    ``ranked``: :func:`pixel_rankings` of the same maps, masks, include, labels and types.
    """
    s, y = _paired(scores, labels)
    types = np.asarray(defect_types, dtype=str).reshape(-1)
    if types.shape != s.shape:
        raise ValueError(f"{s.size} scores but {types.size} defect types")
    if maps is not None and len(_as_numpy(maps)) != s.size:
        raise ValueError(f"{s.size} scores but {len(_as_numpy(maps))} maps")
    g = _as_binary(masks, "masks") if masks is not None else None
    inc = _as_include(include, s.size)
    defect_pixels = ({t: int(np.count_nonzero(g[y & inc & (types == t)])) for t in set(types[y])}
                     if g is not None else {})
    total = sum(defect_pixels.values())
    if maps is not None and g is not None:
        fpr_limit = _check_fpr_limit(fpr_limit)
        ranked = ranked or pixel_rankings(maps, g, inc, y, types)
    out: dict[str, dict[str, Any]] = {}
    for t in sorted(set(types[y])):
        subset = ((types == t) & y) | ~y
        row: dict[str, Any] = {"n": int(np.count_nonzero(types[y] == t)),
                               "image_auroc": image_auroc(s[subset], y[subset])}
        if maps is not None and g is not None:
            row.update(_metrics_of(*ranked.by_type[str(t)], fpr_limit))
            row["pixel_share"] = defect_pixels[t] / total if total else None
        out[str(t)] = row
    return out
