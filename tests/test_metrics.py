"""Tests of kit/metrics.py against sklearn, hand-computed examples and brute force."""

import json
import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from kit import metrics
from kit.metrics import (
    aupro,
    curves,
    evaluate,
    f1_max,
    image_auroc,
    per_image_pixel_auroc,
    pixel_metrics,
    pro_curve,
    scores_at_threshold,
    threshold_from_normal,
)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def random_set(seed, n=6, size=24, n_clean=2, quantise=None):
    """Maps [n, size, size] float64 and masks with a few random blobs; the first n_clean
    images have no defect. quantise=k rounds scores to k levels (many ties)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n_clean, n):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, size, 2)
            h, w = rng.integers(1, 6, 2)
            masks[i, r:r + h, c:c + w] = True
    # informative but imperfect maps: mask plus noise
    maps = masks * 1.0 + rng.normal(0.0, 0.7, masks.shape)
    if quantise:
        maps = np.round(maps * quantise) / quantise
    return maps, masks


def brute_pro_points(maps, masks, include):
    """(fpr, pro) at EVERY distinct score of the included pixels, descending, after (0, 0)."""
    regions = []  # list of (image index, boolean region mask)
    for i in np.flatnonzero(include):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == r) for r in range(1, n + 1)]
    normal = np.concatenate([maps[i][~masks[i]] for i in np.flatnonzero(include)])
    everything = np.concatenate([maps[i].ravel() for i in np.flatnonzero(include)])
    fprs, pros = [0.0], [0.0]
    for t in np.unique(everything)[::-1]:
        overlaps = [np.mean(maps[i][region] >= t) for i, region in regions]
        pros.append(float(np.mean(overlaps)))
        fprs.append(float(np.mean(normal >= t)))
    return fprs, pros


def brute_area(fprs, pros, limit):
    """Trapezoid area from 0 to limit, interpolating at limit, divided by limit (plain loop)."""
    xs, ys = [fprs[0]], [pros[0]]
    for x, y in zip(fprs[1:], pros[1:]):
        if x <= limit:
            xs.append(x)
            ys.append(y)
        else:
            x0, y0 = xs[-1], ys[-1]
            xs.append(limit)
            ys.append(y0 + (y - y0) * (limit - x0) / (x - x0))
            break
    area = 0.0
    for k in range(1, len(xs)):
        area += (xs[k] - xs[k - 1]) * (ys[k] + ys[k - 1]) / 2
    return area / limit


def brute_f1(scores, labels):
    best = (0.0, None)
    for t in np.unique(scores)[::-1]:
        flagged = scores >= t
        tp = np.sum(flagged & labels)
        fp = np.sum(flagged & ~labels)
        fn = np.sum(~flagged & labels)
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best[0]:
            best = (f1, t)
    return best


# ----------------------------------------------------------------------------------------------
# AUROC / AUPR against sklearn, rank invariance
# ----------------------------------------------------------------------------------------------

def test_image_auroc_hand_example():
    # pairs (anomalous, normal): 0.35 beats 0.1 only, 0.8 beats both -> 3 of 4
    assert image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.4
    scores = rng.normal(size=200) + labels * 0.8
    scores[:50] = np.round(scores[:50])  # some ties
    expected = roc_auc_score(labels, scores)
    assert 0.55 < expected < 0.95  # the data is neither trivial nor random
    assert image_auroc(scores, labels) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("quantise", [None, 4])
@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_aupr_match_sklearn(seed, quantise):
    maps, masks = random_set(seed, quantise=quantise)
    include = np.ones(len(maps), bool)
    include[-1] = False  # excluded images must not enter the sklearn reference either
    result = pixel_metrics(maps, masks, include)
    y, s = masks[include].ravel(), maps[include].ravel()
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-10)
    assert result["pixel_aupr"] == pytest.approx(average_precision_score(y, s), abs=1e-10)


def test_pixel_metrics_float32_maps_match_sklearn():
    maps, masks = random_set(7)
    maps32 = maps.astype(np.float32)
    result = pixel_metrics(maps32, masks)
    y, s = masks.ravel(), maps32.ravel()
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-10)
    assert result["pixel_aupr"] == pytest.approx(average_precision_score(y, s), abs=1e-10)


def test_auroc_is_rank_based_for_scores_in_the_hundreds():
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.3
    scores = rng.uniform(10, 800, 300) + labels * 150
    a = image_auroc(scores, labels)
    assert a == pytest.approx(image_auroc(scores / 1000.0, labels), abs=1e-12)
    assert a == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert 0.6 < a < 0.99


def test_large_scores_are_not_squashed():
    # a sigmoid maps every one of these scores to exactly 1.0 in float64 (all tied -> 0.5);
    # ranking the raw values separates the classes perfectly
    scores = np.array([40.0, 50.0, 60.0, 700.0, 750.0, 800.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    squashed = 1.0 / (1.0 + np.exp(-scores))
    assert np.all(squashed == 1.0)
    assert roc_auc_score(labels, squashed) == 0.5
    assert image_auroc(scores, labels) == 1.0
    # same at pixel level: maps in the hundreds
    maps = np.full((1, 2, 3), 45.0)
    maps[0, 0, :2] = [700.0, 750.0]
    masks = maps > 100
    result = pixel_metrics(maps, masks)
    assert result == {"pixel_auroc": 1.0, "pixel_aupr": 1.0, "aupro": 1.0}


def test_pixel_metrics_invariant_to_affine_rescaling():
    maps, masks = random_set(11, quantise=8)
    a = pixel_metrics(maps, masks)
    b = pixel_metrics(maps * 1000.0 + 500.0, masks)
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-12)


# ----------------------------------------------------------------------------------------------
# PRO / AUPRO
# ----------------------------------------------------------------------------------------------

def test_aupro_hand_example_single_region():
    # one 2-pixel region with scores 0.9 and 0.2; normals 0.5, 0.1, 0.0.
    # curve: (0,0) (0,.5) (1/3,.5) (1/3,1) (2/3,1) (1,1)
    maps = np.array([[[0.9, 0.2, 0.5, 0.1, 0.0]]])
    masks = np.array([[[1, 1, 0, 0, 0]]], dtype=bool)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.5)
    assert aupro(maps, masks, fpr_limit=0.5) == pytest.approx((1 / 6 + 1 / 6) / 0.5)
    fpr, pro = pro_curve(maps, masks)
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert (fpr[-1], pro[-1]) == (1.0, 1.0)
    result = pixel_metrics(maps, masks)
    assert result["pixel_auroc"] == pytest.approx(5 / 6)
    assert result["pixel_aupr"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_pro_averages_over_regions_not_pixels():
    # region A = 1 pixel (0.9), region B = 3 pixels (0.9, 0.1, 0.1), normals 0.5, 0.0, 0.0.
    # at t = 0.9: overlaps 1 and 1/3 -> PRO 2/3 (pixel recall would be 2/4) until FPR 1/3
    maps = np.array([[[0.9, 0.5, 0.9, 0.1, 0.1, 0.0, 0.0]]])
    masks = np.array([[[1, 0, 1, 1, 1, 0, 0]]], dtype=bool)
    assert aupro(maps, masks) == pytest.approx(2 / 3)


def test_regions_are_8_connected():
    # one region {(0,0), (1,1), (1,2)} touching by a corner; with 4-connectivity there would
    # be two regions and PRO at the top threshold would be (1 + 0) / 2 instead of 1/3
    masks = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]]], dtype=bool)
    maps = np.where(masks, 0.05, 0.5)
    maps[0, 0, 0] = 0.9
    assert aupro(maps, masks) == pytest.approx(1 / 3)


def test_regions_pool_over_images():
    # image 0: one region fully detected; image 1: one region missed -> PRO 1/2 at low FPR
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2, :2] = True
    masks[1, :1, :3] = True
    maps = np.zeros((2, 4, 4))
    maps[0][masks[0]] = 1.0
    maps[1][masks[1]] = -1.0
    assert aupro(maps, masks) == pytest.approx(0.5)


@pytest.mark.parametrize("quantise", [None, 3, 10])
@pytest.mark.parametrize("seed", range(4))
def test_aupro_matches_brute_force(seed, quantise):
    maps, masks = random_set(seed, quantise=quantise)
    include = np.ones(len(maps), bool)
    include[3] = False
    fprs, pros = brute_pro_points(maps, masks, include)
    for limit in (0.3, 0.05, 1.0):
        expected = brute_area(fprs, pros, limit)
        assert 0.0 < expected < 1.0
        assert aupro(maps, masks, include, fpr_limit=limit) == pytest.approx(expected, abs=1e-6)


def test_pro_curve_points_lie_on_brute_force_curve():
    # every brute-force point (at every distinct threshold) is on our polyline: for each
    # brute point, our curve has the same PRO at that FPR somewhere (vertical steps allowed)
    maps, masks = random_set(5, quantise=6)
    include = np.ones(len(maps), bool)
    fprs, pros = brute_pro_points(maps, masks, include)
    fpr, pro = pro_curve(maps, masks, include)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    for x, y in zip(fprs, pros):
        at_x = pro[np.isclose(fpr, x, atol=1e-12)]
        if at_x.size:  # a corner point of ours: the brute point lies on that vertical
            assert at_x.min() - 1e-9 <= y <= at_x.max() + 1e-9
        else:  # inside a horizontal stretch: PRO equals the value of the last corner before
            assert y == pytest.approx(pro[np.searchsorted(fpr, x) - 1], abs=1e-9)


def test_pro_curve_truncation_interpolates_at_limit():
    maps, masks = random_set(2)
    fpr, pro = pro_curve(maps, masks, fpr_limit=0.3)
    assert fpr[-1] == 0.3
    assert np.all(fpr <= 0.3)
    full_fpr, full_pro = pro_curve(maps, masks)
    j = np.searchsorted(full_fpr, 0.3)  # first point beyond the limit
    expected = np.interp(0.3, full_fpr[j - 1:j + 1], full_pro[j - 1:j + 1])
    assert pro[-1] == pytest.approx(expected, abs=1e-12)


def test_aupro_perfect_map_is_one_and_inverted_map_is_zero():
    _, masks = random_set(1)
    rng = np.random.default_rng(0)
    noise = rng.uniform(0.0, 0.5, masks.shape)
    perfect = masks + noise  # every anomalous pixel above every normal pixel
    assert aupro(perfect, masks) == 1.0
    assert pixel_metrics(perfect, masks)["pixel_auroc"] == 1.0
    inverted = -perfect  # every anomalous pixel below every normal pixel
    # PRO stays 0 until every normal pixel is flagged (FPR 1), far beyond 0.3
    assert aupro(inverted, masks) == 0.0
    assert pixel_metrics(inverted, masks)["pixel_auroc"] == 0.0


def test_aupro_perfect_map_with_many_regions_never_exceeds_one():
    # many regions of awkward sizes: sums of 1/|r| accumulate rounding errors, which on some
    # of these seeds push the raw PRO (and the raw area) above 1 by ~1e-16
    for seed in range(40):
        rng = np.random.default_rng(seed)
        n, size = rng.integers(1, 4), rng.integers(4, 12)
        masks = rng.random((n, size, size)) < rng.uniform(0.1, 0.5)
        maps = masks + rng.uniform(0, 0.9, masks.shape)
        if not masks.any() or masks.all():
            continue  # undefined (None), covered elsewhere
        for limit in (0.3, 0.001, 1.0):
            value = aupro(maps, masks, fpr_limit=limit)
            assert value <= 1.0
            assert value == pytest.approx(1.0, abs=1e-12)
        assert np.all(pro_curve(maps, masks)[1] <= 1.0)


def test_aupro_in_unit_interval_on_many_random_cases():
    rng = np.random.default_rng(2024)
    values = []
    for _ in range(150):
        n, size = rng.integers(1, 4), rng.integers(3, 10)
        masks = rng.random((n, size, size)) < rng.uniform(0.05, 0.6)
        maps = rng.normal(size=masks.shape) + masks * rng.normal()
        if rng.random() < 0.5:
            maps = np.round(maps)  # heavy ties
        include = rng.random(n) < 0.8
        value = aupro(maps, masks, include, fpr_limit=rng.uniform(0.01, 1.0))
        if value is not None:
            assert 0.0 <= value <= 1.0
            values.append(value)
    assert len(values) > 100
    assert min(values) < 0.2 and max(values) > 0.8  # the loop covered a wide range


def test_excluded_images_are_ignored():
    maps, masks = random_set(9)
    include = np.array([True, True, True, False, True, False])
    base = pixel_metrics(maps, masks, include)
    changed_maps, changed_masks = maps.copy(), masks.copy()
    changed_maps[[3, 5]] = np.random.default_rng(1).normal(size=(2, 24, 24)) * 100
    changed_masks[3] = False  # e.g. a defect image with an empty mask
    changed = pixel_metrics(changed_maps, changed_masks, include)
    assert changed == base
    # and they would have mattered if included
    everything = pixel_metrics(changed_maps, changed_masks)
    assert everything["aupro"] != pytest.approx(base["aupro"], abs=1e-3)
    assert everything["pixel_auroc"] != pytest.approx(base["pixel_auroc"], abs=1e-3)


def test_undefined_pixel_metrics_are_none():
    maps = np.random.default_rng(0).normal(size=(2, 5, 5))
    no_defect = np.zeros((2, 5, 5), bool)
    assert pixel_metrics(maps, no_defect) == {"pixel_auroc": None, "pixel_aupr": None,
                                               "aupro": None}
    assert aupro(maps, np.ones((2, 5, 5), bool)) is None  # no normal pixel
    # the only defect sits in an excluded image
    mask = no_defect.copy()
    mask[1, 2, 2] = True
    assert aupro(maps, mask, include=[True, False]) is None
    with pytest.raises(ValueError):
        pro_curve(maps, no_defect)


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    maps, masks = random_set(6)
    expected = pixel_metrics(maps, masks)
    got = pixel_metrics(torch.tensor(maps, requires_grad=True), torch.tensor(masks))
    assert got == expected
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    assert image_auroc(scores, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)


def test_invalid_inputs_raise():
    maps, masks = random_set(0)
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0.1, np.nan, 0.3], [0, 1, 1])
    bad = maps.copy()
    bad[2, 0, 0] = np.nan
    with pytest.raises(ValueError, match="maps\\[2\\]"):
        pixel_metrics(bad, masks)
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(maps, masks[:, :10])
    with pytest.raises(ValueError, match="0/1"):
        pixel_metrics(maps, masks.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=0.0)


# ----------------------------------------------------------------------------------------------
# thresholds, F1
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_f1_max_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(150) < 0.3
    scores = np.round(rng.normal(size=150) + labels, 1)  # ties
    f1, threshold = f1_max(scores, labels)
    expected_f1, expected_threshold = brute_f1(scores, labels)
    assert f1 == pytest.approx(expected_f1, abs=1e-12)
    assert threshold == expected_threshold  # highest threshold among the best
    assert scores_at_threshold(scores, labels, threshold)["f1"] == pytest.approx(f1, abs=1e-12)


def test_f1_max_hand_example_and_pixel_level():
    # threshold 0.35: tp 2, fp 1, fn 0 -> F1 = 4/5; threshold 0.8: tp 1 -> 2/3
    assert f1_max([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == (pytest.approx(0.8), 0.35)
    maps, masks = random_set(3, quantise=5)
    f1, threshold = f1_max(maps, masks)
    expected_f1, expected_threshold = brute_f1(maps.ravel(), masks.ravel())
    assert f1 == pytest.approx(expected_f1, abs=1e-12)
    assert threshold == expected_threshold
    assert f1_max([0.3, 0.2], [0, 0]) == (None, None)


def test_f1_max_tie_returns_highest_threshold():
    # t = 5: tp 1, fp 0, fn 1 -> 2/3; t = 2: tp 2, fp 2, fn 0 -> 4/6 = 2/3 as well
    f1, threshold = f1_max([5.0, 4.0, 3.0, 2.0], [1, 0, 0, 1])
    assert f1 == pytest.approx(2 / 3)
    assert threshold == 5.0


def test_threshold_from_normal_hand_examples():
    assert threshold_from_normal(np.arange(101.0)) == pytest.approx(99.0)
    assert threshold_from_normal(np.arange(101.0), quantile=0.5) == pytest.approx(50.0)
    # 10 values 1..10: position 0.9 * 9 = 8.1 -> 9 + 0.1 * (10 - 9)
    assert threshold_from_normal(np.arange(1.0, 11.0), quantile=0.9) == pytest.approx(9.1)
    with pytest.raises(ValueError):
        threshold_from_normal([1.0, 2.0], quantile=1.5)


def test_scores_at_threshold_hand_example():
    scores = [0.1, 0.4, 0.35, 0.8, 0.5]
    labels = [0, 0, 1, 1, 0]
    # flagged (>= 0.4): 0.4 (normal), 0.8 (anomalous), 0.5 (normal)
    assert scores_at_threshold(scores, labels, 0.4) == {
        "precision": pytest.approx(1 / 3), "recall": 0.5, "f1": pytest.approx(0.4),
        "tp": 1, "fp": 2, "fn": 1, "tn": 1,
    }
    # ">=": a score equal to the threshold is flagged
    assert scores_at_threshold(scores, labels, 0.35)["tp"] == 2


def test_scores_at_threshold_undefined_ratios_are_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nothing_flagged = scores_at_threshold([0.1, 0.2], [0, 1], 5.0)
        no_positive = scores_at_threshold([0.1, 0.2], [0, 0], 0.15)
    assert nothing_flagged == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                               "tp": 0, "fp": 0, "fn": 1, "tn": 1}
    assert no_positive == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                           "tp": 0, "fp": 1, "fn": 0, "tn": 1}


# ----------------------------------------------------------------------------------------------
# curves, evaluate
# ----------------------------------------------------------------------------------------------

def test_curves_are_downsampled_and_json_serialisable():
    rng = np.random.default_rng(0)
    labels = rng.random(1000) < 0.4
    scores = rng.normal(size=1000) + labels
    maps, masks = random_set(4, n=8, size=32)
    out = curves(scores, labels, maps, masks, max_points=50)
    json.dumps(out)
    assert set(out) == {"image_roc", "image_pr", "pixel_roc", "pro"}
    for name, (x, y) in {"image_roc": ("fpr", "tpr"), "image_pr": ("recall", "precision"),
                         "pixel_roc": ("fpr", "tpr"), "pro": ("fpr", "pro")}.items():
        assert 2 <= len(out[name][x]) == len(out[name][y]) <= 50
        assert all(type(v) is float for v in out[name][x] + out[name][y])
    assert len(out["pixel_roc"]["fpr"]) == 50  # had many more points before downsampling
    assert (out["image_roc"]["fpr"][0], out["image_roc"]["fpr"][-1]) == (0.0, 1.0)
    assert (out["pixel_roc"]["tpr"][0], out["pixel_roc"]["tpr"][-1]) == (0.0, 1.0)
    assert out["image_pr"]["recall"][0] == 0.0 and out["image_pr"]["recall"][-1] == 1.0
    assert out["pro"]["fpr"][0] == 0.0 and out["pro"]["fpr"][-1] == 0.3
    assert out["pro"]["fpr_limit"] == 0.3
    only_image = curves(scores, labels)
    assert only_image["pixel_roc"] is None and only_image["pro"] is None
    json.dumps(only_image)


def test_evaluate_summary():
    rng = np.random.default_rng(1)
    maps, masks = random_set(8, n=8)
    labels = masks.reshape(8, -1).any(1)
    scores = maps.reshape(8, -1).max(1).astype(np.float32)
    include = np.ones(8, bool)
    include[-1] = False
    out = evaluate(scores, labels, maps, masks, include, threshold=np.float32(1.5))
    json.dumps(out)
    assert set(out) == {"image_auroc", "f1_max", "pixel_auroc", "pixel_aupr", "aupro",
                        "threshold", "precision", "recall", "f1"}
    assert all(type(v) is float for v in out.values())
    assert out["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert out["aupro"] == pytest.approx(aupro(maps, masks, include))
    at = scores_at_threshold(scores, labels, 1.5)
    assert (out["precision"], out["recall"], out["f1"]) == (at["precision"], at["recall"],
                                                            at["f1"])
    # one class only, no maps: undefined values are None, nothing crashes
    single = evaluate(rng.normal(size=5), np.zeros(5, bool))
    assert single == {"image_auroc": None, "f1_max": None, "pixel_auroc": None,
                      "pixel_aupr": None, "aupro": None}
    json.dumps(single)
    with pytest.raises(ValueError):
        evaluate(scores, labels, masks=masks)


def test_module_never_squashes_scores():
    # guard against a sigmoid or min-max normalisation creeping into the module
    source = open(metrics.__file__).read()
    code = "\n".join(line.split("#")[0] for line in source.splitlines())
    assert "exp(" not in code and "sigmoid(" not in code and "expit" not in code


def test_by_defect_type_scores_each_type_against_the_normals():
    """Each type's row equals the plain metrics on that type's images plus every normal
    image; the pixel shares add up to 1 and follow the mask areas."""
    rng = np.random.default_rng(3)
    n, size = 12, 16
    types = np.array(["good"] * 4 + ["crack"] * 4 + ["uneven"] * 4)
    labels = types != "good"
    masks = np.zeros((n, size, size), bool)
    masks[4:8, 5:7, 5:7] = True          # small defects
    masks[8:, :, 8:] = True              # half the image
    maps = rng.random((n, size, size)) + 0.8 * masks
    maps[8:, :, 8:] -= 0.75              # the large type is scored barely above its background
    scores = maps.reshape(n, -1).max(1)
    include = np.ones(n, bool)
    include[11] = False                  # an unannotated defect: left out of pixel metrics
    rows = metrics.by_defect_type(scores, labels, types, maps, masks, include)
    assert sorted(rows) == ["crack", "uneven"]
    tied = np.round(maps, 1)  # scores tied across normal and defect pixels
    for t, row in rows.items():
        sel = (types == t) | (types == "good")
        expect = metrics.pixel_metrics(maps[sel], masks[sel], include[sel])
        assert row["pixel_auroc"] == pytest.approx(expect["pixel_auroc"])
        assert row["aupro"] == pytest.approx(expect["aupro"])
        assert row["image_auroc"] == pytest.approx(roc_auc_score(labels[sel], scores[sel]))
        assert row["n"] == 4
        # the normal images are ranked once for every type: exactly the plain metrics
        for m in (maps, tied):
            got = metrics.by_defect_type(scores, labels, types, m, masks, include)[t]
            plain = metrics.pixel_metrics(m[sel], masks[sel], include[sel])
            assert {k: got[k] for k in plain} == plain
    odd = masks.copy()
    odd[0, 0, 0] = True  # a "normal" image with a mask pixel: still each type's plain metrics
    got = metrics.by_defect_type(scores, labels, types, tied, odd, include)["crack"]
    sel = (types == "crack") | (types == "good")
    plain = metrics.pixel_metrics(tied[sel], odd[sel], include[sel])
    assert {k: got[k] for k in plain} == plain
    assert rows["crack"]["pixel_auroc"] > rows["uneven"]["pixel_auroc"]
    assert rows["crack"]["pixel_share"] == pytest.approx(16 / (16 + 3 * 128))
    assert rows["crack"]["pixel_share"] + rows["uneven"]["pixel_share"] == pytest.approx(1.0)
    # without maps: image AUROC per type only
    assert set(metrics.by_defect_type(scores, labels, types)["crack"]) == {"n", "image_auroc"}
    with pytest.raises(ValueError, match="defect types"):
        metrics.by_defect_type(scores, labels, types[:-1])
    with pytest.raises(ValueError, match="12 scores but 11 maps"):
        metrics.by_defect_type(scores, labels, types, maps[:-1], masks[:-1], include)


def test_shared_pixel_rankings_give_the_metrics_and_curves_of_separate_ones():
    """pixel_rankings sorts normal pixels once for every ranking and each type's pixels once
    for its own and the overall ranking; evaluate, by_defect_type and curves given it return
    what they return sorting every set on its own, ties and left-out images included."""
    rng = np.random.default_rng(11)
    n, size = 15, 12
    types = np.array(["good"] * 6 + ["crack"] * 5 + ["uneven"] * 4)
    labels = types != "good"
    masks = np.zeros((n, size, size), bool)
    masks[6:11, 2:5, 3:6] = True
    masks[11:, :, 6:] = True
    masks[12, 0, 0] = True  # a second region in one image
    include = np.ones(n, bool)
    include[13] = False
    for maps in (rng.random((n, size, size)) + 0.5 * masks,
                 np.round(rng.random((n, size, size)) + 0.3 * masks, 1)):  # many ties
        scores = maps.reshape(n, -1).max(1)
        ranked = metrics.pixel_rankings(maps, masks, include, labels, types)
        assert metrics.evaluate(scores, labels, maps, masks, include, threshold=0.5, ranked=ranked) \
            == metrics.evaluate(scores, labels, maps, masks, include, threshold=0.5)
        assert metrics.curves(scores, labels, maps, masks, include, ranked=ranked) \
            == metrics.curves(scores, labels, maps, masks, include)
        rows = metrics.by_defect_type(scores, labels, types, maps, masks, include, ranked=ranked)
        for t in ("crack", "uneven"):
            sel = (types == t) | (types == "good")
            plain = metrics.pixel_metrics(maps[sel], masks[sel], include[sel])
            assert {k: rows[t][k] for k in plain} == pytest.approx(plain, abs=1e-12)
    with pytest.raises(ValueError, match="labels"):
        metrics.pixel_rankings(maps, masks, include, labels[:-1], types)


def test_per_image_pixel_auroc_ignores_how_levels_differ_between_images():
    """Each defective image's own AUROC, averaged: a map that ranks every defect above its own
    image's background is perfect here, however its level moves between images, while the pooled
    AUROC sees the drift; normal and excluded images do not count."""
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), bool)
    masks[0, 2:5, 2:5] = masks[1, 8:12, 3:9] = masks[2, 0:3, 10:16] = True
    maps = rng.random((4, 16, 16)) + masks  # every defect above its own background
    maps[1] += 5.0  # one image's whole map drifts up, another's down: pooled pixel AUROC drops
    maps[2] -= 5.0
    assert per_image_pixel_auroc(maps, masks) == pytest.approx(1.0)
    assert pixel_metrics(maps, masks)["pixel_auroc"] < 0.9
    expected = np.mean([roc_auc_score(masks[i].ravel(), -maps[i].ravel()) for i in range(3)])
    assert per_image_pixel_auroc(-maps, masks) == pytest.approx(expected) == pytest.approx(0.0)
    include = np.array([True, False, True, True])
    assert per_image_pixel_auroc(maps * [[[1]], [[-1]], [[1]], [[1]]], masks, include) == 1.0
    assert per_image_pixel_auroc(maps, np.zeros_like(masks)) is None
    with pytest.raises(ValueError, match="must both be"):
        per_image_pixel_auroc(maps[:, :8], masks)
