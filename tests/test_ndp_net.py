"""NDP-Net (``ndp_net``) and its parts: the RBAM (``kit/rbam.py``), the MSDSM heads
(``kit/segmentation.py``), its losses (``kit/losses.py``) and filters (``kit/maps.py``).

Fast tests use an untrained backbone and tiny images; the real-data floor at the end uses the
embedded MTD sample with ImageNet Lite0 weights.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from kit import metrics as M
from kit.data import ImageSet, find_category
from kit.losses import defect_perception_loss, focal_loss, minmax_per_image, perceptual_l1
from kit.maps import mean_filter, median_filter, ssim_map
from kit.method import FitContext, make_method
from kit.methods.ndp_net import NdpNet, NdpNetConfig
from kit.papers.ndp_net import PAPER
from kit.pipeline import restore_method
from kit.rbam import FeatureFusion, ReferenceAttention, reference_repair
from kit.synthetic import defect_set

FAST = dict(weights="none", image_size=64, phase1_epochs=1, phase2_epochs=2,
            decoder_blocks=(1, 1, 1, 1), seg_hidden=(4, 4, 4), fusion_channels=8)
NAMED = {"AM1", "AM2", "AM3", "pixel_gap", "msfr", "ssim"}


def _fitted(root, **overrides):
    cat = find_category(root, "toy")
    method = make_method("ndp_net", "quick", **{**FAST, **overrides})
    epochs: list[int] = []
    log = method.fit(ImageSet(cat.train, 64),
                     FitContext(progress=False, on_epoch=lambda e, n, losses: epochs.append((e, n))))
    test = torch.stack([ImageSet(cat.test, 64)[i] for i in range(len(cat.test))])
    return method, test, log, epochs


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from conftest import make_toy_dataset
    root = make_toy_dataset(tmp_path_factory.mktemp("ndp"))
    return (root, *_fitted(root))


# -- the paper's values ---------------------------------------------------------------------------

def test_config_has_the_papers_values():
    c = NdpNetConfig()
    assert c.patch_sizes == (2, 4) and c.fusion_kernel == 5 and c.fusion_channels == 64
    assert c.seg_weights == (0.2, 0.2, 0.6) and c.filter_size == 5 and c.image_size == 256
    assert (c.w_rec1, c.w_per1, c.w_def_per) == (100, 1, 1)
    assert (c.w_rec2, c.w_per2, c.w_fea_rep, c.w_seg) == (100, 1, 1, 1)
    assert (c.lr, c.weight_decay, c.phase1_epochs, c.phase2_epochs) == (1e-4, 1e-5, 400, 200)
    assert c.synthetic_beta == (0.0, 0.0)  # eq. 1: the source replaces the image in the mask
    with pytest.raises(ValueError, match="reference"):
        NdpNetConfig(reference="last")
    with pytest.raises(ValueError, match="segmentation"):
        NdpNetConfig(segmentation="lpips")
    with pytest.raises(ValueError, match="multiple of 32"):
        NdpNetConfig(image_size=100)


def test_table6_variants_are_valid_configs_and_D_to_F_are_maps_of_run_A():
    table = PAPER.ablation("table6")
    assert [v.label for v in table.variants] == list("ABCDEF")
    for v in table.variants:
        NdpNetConfig.for_budget("quick", **v.overrides)
    assert {v.map for v in table.variants if v.label in "DEF"} == {"pixel_gap", "msfr", "ssim"}
    assert all(v.overrides == {} for v in table.variants if v.label in "ADEF")
    # the paper's ordering, as rebuilt from its prose: A is the best in pixel ROCAUC
    values = {v.label: v.paper_value for v in table.variants}
    assert max(values, key=values.get) == "A"


# -- RBAM -----------------------------------------------------------------------------------------

def test_rbfrm_rebuilds_every_patch_from_the_reference():
    torch.manual_seed(0)
    ref = torch.randn(1, 6, 8, 8)
    # a sharp softmax picks the most similar reference patch: the reference repairs to itself
    assert torch.allclose(reference_repair(ref, ref, 2, scale=1e4), ref, atol=1e-5)
    # a "defect": one patch replaced by a scaled copy of another reference patch -> that patch
    bad = ref.clone()
    bad[..., 0:2, 0:2] = 7 * ref[..., 4:6, 2:4]
    out = reference_repair(bad, ref, 2, scale=1e4)
    assert torch.allclose(out[..., 0:2, 0:2], ref[..., 4:6, 2:4], atol=1e-5)
    # the paper's scale 1: every output patch is a convex mix of reference patches
    mix = reference_repair(torch.randn(3, 6, 8, 8), ref, 4, scale=1.0)
    patches = F.unfold(ref, 4, stride=4)[0]  # [D, N]
    lo, hi = patches.min(1).values, patches.max(1).values
    out_p = F.unfold(mix, 4, stride=4)  # [3, D, N]
    assert (out_p >= lo[None, :, None] - 1e-5).all() and (out_p <= hi[None, :, None] + 1e-5).all()


def test_patches_are_unfolds_layout_and_unpatches_its_inverse():
    """RBFRM cuts patches by reshaping (fold has no ONNX export): unfold's values and order."""
    from kit.rbam import _patches, _unpatches

    x = torch.randn(2, 3, 8, 12)
    for k in (1, 2, 4):
        assert torch.equal(_patches(x, k), F.unfold(x, k, stride=k))
        assert torch.equal(_unpatches(_patches(x, k), k, 8, 12), x)


def test_the_median_network_selects_the_middle_value_and_the_filter_traces():
    """0-1 principle: a network of minima and maxima selects the median of every input iff it
    does for every input of zeros and ones (all 512 for 9 values); random values for 25 and 49."""
    from kit.maps import median_network

    def run(n, values):
        ops, out, _ = median_network(n)
        slots = dict(enumerate(values))
        for slot, kind, a, b in ops:
            slots[slot] = (np.minimum if kind == "min" else np.maximum)(slots[a], slots[b])
        return slots[out]

    cases = np.arange(512)
    bits = [(cases >> i) & 1 for i in range(9)]
    assert np.array_equal(run(9, bits), (np.sum(bits, 0) > 4).astype(int))
    rng = np.random.default_rng(0)
    for n in (1, 3, 25, 49):
        x = rng.standard_normal((n, 1000))
        assert np.array_equal(run(n, list(x)), np.median(x, 0)), n
    with pytest.raises(ValueError, match="odd"):
        median_filter(torch.zeros(1, 8, 8), 4)
    # the filter is the same traced (ONNX export) as eager: no data-dependent branch
    x = torch.randn(2, 9, 11)
    traced = torch.jit.trace(lambda m: median_filter(m, 5), (x,), check_trace=False)
    assert torch.equal(traced(x), median_filter(x, 5))
    assert torch.equal(traced(x + 1), median_filter(x + 1, 5))


def test_rbfrm_pads_sides_that_k_does_not_divide():
    ref = torch.randn(1, 4, 6, 5)
    out = reference_repair(torch.randn(2, 4, 6, 5), ref, 4)
    assert out.shape == (2, 4, 6, 5) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="same channels and size"):
        reference_repair(torch.randn(1, 4, 6, 5), torch.randn(1, 4, 6, 6), 2)


def test_ffm_weights_sum_to_one_and_rbam_keeps_shapes():
    fusion = FeatureFusion(5, branches=3, kernel=5, mid=8).eval()
    f = torch.randn(2, 5, 8, 8)
    assert torch.allclose(fusion([f, f, f]), f, atol=1e-5)  # a convex mix of three equal maps
    rbam = ReferenceAttention(5, (2, 4), kernel=5, mid=8).eval()
    assert rbam(f, torch.randn(1, 5, 8, 8)).shape == f.shape


# -- losses and filters ---------------------------------------------------------------------------

def test_defect_perception_loss_is_zero_when_the_difference_is_the_mask():
    mask = torch.zeros(2, 16, 16)
    mask[:, 4:12, 4:8] = 1
    clean = [torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 8, 8)]
    seen = [c + F.interpolate(mask[:, None], size=c.shape[-2:], mode="bilinear",
                              align_corners=False) for c in clean]
    assert float(defect_perception_loss(clean, seen, mask)) < 1e-3
    elsewhere = [c + F.interpolate(1 - mask[:, None], size=c.shape[-2:]) for c in clean]
    assert float(defect_perception_loss(clean, elsewhere, mask)) > 0.3
    assert float(defect_perception_loss(clean, seen, torch.zeros(2, 16, 16))) == 0.0
    scaled = minmax_per_image(torch.tensor([[[2.0, 4.0], [6.0, 10.0]]]))
    assert torch.allclose(scaled, torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]))


def test_focal_loss_is_bce_at_gamma_0_and_smaller_on_easy_pixels():
    logits, target = torch.randn(2, 8, 8), (torch.rand(2, 8, 8) > 0.8).float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), bce)
    assert focal_loss(logits, target, gamma=2.0) < bce
    weighted = focal_loss(logits, target, gamma=0.0, alpha=0.25)
    manual = F.binary_cross_entropy_with_logits(logits, target, weight=0.25 * target + 0.75 * (1 - target))
    assert torch.allclose(weighted, manual)
    a = [torch.ones(1, 2, 4, 4), torch.zeros(1, 3, 2, 2)]
    assert torch.isclose(perceptual_l1(a, [torch.zeros_like(t) for t in a]), torch.tensor(0.5))


def test_mean_and_median_filters_match_scipy():
    x = torch.rand(2, 12, 10, dtype=torch.float64)
    for b in range(2):
        # torch's "reflect" padding is scipy's "mirror" (the edge value is not repeated)
        assert np.allclose(mean_filter(x, 5)[b].numpy(), ndimage.uniform_filter(x[b].numpy(), 5, mode="mirror"))
        assert np.allclose(median_filter(x, 5)[b].numpy(), ndimage.median_filter(x[b].numpy(), 5, mode="mirror"))


def test_ssim_is_one_for_equal_images_and_drops_where_they_differ():
    a = torch.rand(1, 3, 32, 32)
    assert torch.allclose(ssim_map(a, a), torch.ones(1, 32, 32), atol=1e-5)
    b = a.clone()
    b[..., 8:16, 8:16] = torch.rand(3, 8, 8)
    s = ssim_map(a, b)
    assert s[0, 10:14, 10:14].mean() < 0.5 and s[0, 24:, 24:].mean() > 0.99


# -- the method -----------------------------------------------------------------------------------

def test_fit_reports_every_epoch_once_in_order_and_records_the_reference(fitted):
    root, method, _, log, epochs = fitted
    assert epochs == [(1, 3), (2, 3), (3, 3)]
    cat = find_category(root, "toy")
    paths = [str(s.path) for s in cat.train]
    assert log["reference"]["path"] == min(paths) == paths[log["reference"]["index"]]  # the first by path
    assert method.reference_path == log["reference"]["path"]
    assert len(log["phase1"]["def_per"]) == 1 and len(log["phase2"]["seg"]) == 2
    assert all(not p.requires_grad for p in method.encoder.parameters())


def test_predict_gives_the_maps_of_table6_and_a_reconstruction(fitted):
    _, method, test, _, _ = fitted
    pred = method.predict(test[:3])
    assert set(pred.named_maps) == NAMED
    assert pred.anomaly_maps.shape == (3, 64, 64) and pred.reconstructions.shape == (3, 3, 64, 64)
    assert 0 <= float(pred.reconstructions.min()) and float(pred.reconstructions.max()) <= 1
    assert torch.equal(pred.image_scores, pred.anomaly_maps.flatten(1).max(1).values)
    # eq. 11, then the filters: the primary map from the three AMs
    raw = 0.2 * pred.named_maps["AM1"] + 0.2 * pred.named_maps["AM2"] + 0.6 * pred.named_maps["AM3"]
    assert torch.allclose(pred.anomaly_maps, median_filter(mean_filter(raw, 5), 5), atol=1e-6)
    # another segmentation rule on the same weights: the primary is then that named map
    method.config.segmentation = "ssim"
    try:
        other = method.predict(test[:3])
    finally:
        method.config.segmentation = "msdsm"
    assert torch.allclose(other.anomaly_maps, pred.named_maps["ssim"])
    assert "msdsm" in other.named_maps and "ssim" not in other.named_maps
    emb = method.embed(test[:3])
    assert set(emb) == set(NdpNet.feature_spaces) and emb["source"].shape == emb["repaired"].shape


def test_scores_do_not_depend_on_the_batch(fitted):
    _, method, test, _, _ = fitted
    together = method.predict(test)
    for i in range(len(test)):
        alone = method.predict(test[i:i + 1])
        assert torch.allclose(alone.anomaly_maps[0], together.anomaly_maps[i], atol=1e-5)
        assert torch.allclose(alone.reconstructions[0], together.reconstructions[i], atol=1e-5)


def test_checkpoint_restores_the_same_predictions(fitted):
    _, method, test, _, _ = fitted
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    again = make_method("ndp_net", "quick", **FAST)
    again.load_state_dict(torch.load(buf, weights_only=True))
    a, b = method.predict(test), again.predict(test)
    assert torch.allclose(a.anomaly_maps, b.anomaly_maps, atol=1e-6)
    assert again.reference_path == method.reference_path
    with pytest.raises(ValueError, match="reference_image"):
        state = method.state_dict()
        again.load_state_dict({**state, "reference_image": state["reference_image"].float()})


def test_predict_refuses_before_fit_and_at_another_size(fitted):
    _, method, test, _, _ = fitted
    with pytest.raises(RuntimeError, match="fit"):
        make_method("ndp_net", "quick", **FAST).predict(test[:1])
    with pytest.raises(ValueError, match="64"):
        method.predict(torch.rand(1, 3, 96, 96))


def test_phase2_leaves_the_encoder_as_phase1_made_it(tmp_path, monkeypatch):
    from conftest import make_toy_dataset
    root = make_toy_dataset(tmp_path)
    after_phase1 = {}
    original = NdpNet.fit_phase2

    def spy(self, *args, **kwargs):
        after_phase1.update({k: v.clone() for k, v in self.encoder.state_dict().items()})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NdpNet, "fit_phase2", spy)
    method, _, _, _ = _fitted(root)
    pretrained = make_method("ndp_net", "quick", **FAST).encoder.state_dict()
    final = method.encoder.state_dict()
    assert all(torch.equal(final[k], after_phase1[k]) for k in final)
    assert any(not torch.equal(final[k], pretrained[k]) for k in final)  # phase 1 did train it


def test_ablation_variants_b_and_c_and_the_medoid_reference_fit(tmp_path):
    from conftest import make_toy_dataset
    root = make_toy_dataset(tmp_path)
    no_rbam, test, log_b, _ = _fitted(root, rbam=False)
    assert log_b["phase2"]["fea_rep"] == [0.0, 0.0]  # no RBAM, no repair loss
    no_def, _, log_c, _ = _fitted(root, w_def_per=0.0)
    assert log_c["phase1"]["def_per"] == [0.0]
    medoid, _, log_m, _ = _fitted(root, reference="medoid")
    assert 0 <= log_m["reference"]["index"] < 12
    for m in (no_rbam, no_def, medoid):
        assert set(m.predict(test[:2]).named_maps) == NAMED


def test_a_seeded_fit_is_deterministic(tmp_path):
    from conftest import make_toy_dataset
    root = make_toy_dataset(tmp_path)
    a, test, _, _ = _fitted(root)
    b, _, _, _ = _fitted(root)
    assert torch.equal(a.predict(test).anomaly_maps, b.predict(test).anomaly_maps)


@pytest.mark.slow
def test_quick_budget_on_the_embedded_real_sample(sample_root, sample_default_run):
    """Real images and ImageNet Lite0 weights at the quick budget (about a minute and a half).

    At this budget the method localises its own kind of defect (synthetic, on held-out normals)
    far better than MTD's real ones, whose pixel AUROC is below chance; both floors are the
    values measured when the method landed minus a margin, so they guard against a collapse,
    and the synthetic one is the guard that it learned at all (see docs/results.md)."""
    run = sample_default_run("ndp_net")  # the default quick run, shared with the notebooks
    assert set(run.metrics["maps"]) == NAMED
    assert run.reconstructions, "the run keeps reconstructions for the compare page"
    log = run.config["train_log"]
    assert log["phase2"]["seg"][-1] < log["phase2"]["seg"][0]
    assert log["phase1"]["rec"][-1] < log["phase1"]["rec"][0]
    assert "train/good" in log["reference"]["path"]
    # floors: measured 0.447 pixel / 0.663 image AUROC on the 65 real test images; the image
    # margin is wider because a 65-image AUROC moves more
    assert run.metrics["pixel_auroc"] >= 0.447 - 0.05
    assert run.metrics["image_auroc"] >= 0.663 - 0.08
    # its own recipe's defects on the held-out normals (keys no fit drew)
    method = restore_method(run.path)
    held = [s for s in find_category(sample_root, "magnetic_tile").train
            if f"good/{s.path.name}" in set(run.config["val_images"])]
    clean = ImageSet(held, 256).tensor()
    defects, _, masks = defect_set(method.generator(ImageSet(held, 256), method.fit_context(None)),
                                   clean, 10**9)
    maps = torch.cat([method.predict(defects[i:i + 8].float() / 255).anomaly_maps
                      for i in range(0, len(defects), 8)])
    synthetic = M.pixel_metrics(maps.numpy(), masks.numpy())["pixel_auroc"]
    assert synthetic >= 0.925 - 0.03  # measured 0.925 on the sample's 10 held-out normals
