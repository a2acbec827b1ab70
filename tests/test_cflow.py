"""CFlow-AD (``cflow``) and the conditional flows it shares with CLS-CNFs (``kit/cnf.py``).

Fast tests use an untrained backbone and tiny images; the real-data floor is in
tests/test_real_cflow.py's sibling test below (embedded MTD sample, ImageNet Lite0 weights).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kit.cnf import FiberFlows, PositionalMLP, warmup_cosine
from kit.data import ImageSet, find_category
from kit.flows import positional_encoding_2d
from kit.method import FitContext, make_method
from kit.methods.cflow import CFlowConfig

FAST = dict(weights="none", image_size=64, n_blocks=2, epochs=2, fiber_batch=64)


def _fitted(root, name="cflow", **extra):
    cat = find_category(root, "toy")
    method = make_method(name, "quick", **{**FAST, **extra})
    log = method.fit(ImageSet(cat.train, method.config.image_size), FitContext(progress=False))
    return method, ImageSet(cat.test, method.config.image_size), ImageSet(cat.train, 64), log


def test_config_has_the_papers_values():
    cfg = CFlowConfig()
    assert (cfg.n_blocks, cfg.cond_channels, cfg.clamp, cfg.fiber_batch, cfg.lr) == (8, 128, 1.9, 256, 2e-4)
    assert cfg.layers == (2, 3, 4) and cfg.image_size == 256
    with pytest.raises(ValueError, match="multiple of 4"):
        CFlowConfig(cond_channels=126)


def test_positional_subnet_is_the_concatenated_linear():
    """The lookup-table subnet computes Linear(cat[h, pe(position)]) exactly (to float rounding)."""
    torch.manual_seed(0)
    mlp = PositionalMLP(20, 128, 296, 40)
    torch.nn.init.normal_(mlp.out.weight)  # the zero-initialised output layer would hide everything
    flows = FiberFlows([40], 1, 128)
    pos = torch.randint(0, 12 * 16, (50,))
    h = torch.randn(50, 20)
    dense = positional_encoding_2d(128, 12, 16).flatten(1).T[pos]  # [N, P], rows x cols = 12 x 16
    weight = torch.cat([mlp.inp.weight, mlp.cond_x.weight, mlp.cond_y.weight], 1)
    expected = mlp.out(F.relu(torch.cat([h, dense], 1) @ weight.T + mlp.inp.bias))
    got = mlp(h, flows.condition(pos, 12, 16))
    assert torch.allclose(got, expected, atol=1e-5)


def test_whole_maps_reuse_their_tables_until_the_weights_change():
    """Scoring whole maps without autograd reads cached per-map tables: the same bits as the
    per-fiber lookup, with autograd on or off, and fresh tables after an optimiser step."""
    torch.manual_seed(0)
    mlp = PositionalMLP(20, 128, 296, 40)
    torch.nn.init.normal_(mlp.out.weight)
    flows = FiberFlows([40], 1, 128)
    h = torch.randn(3 * 12 * 16, 20)
    whole = flows.map_condition(3, 12, 16, h.device)
    assert whole.maps == 3
    with torch.no_grad():
        lookup = mlp(h, whole._replace(maps=0))
        assert torch.equal(mlp(h, whole), lookup)
        tables = mlp._tables[2]
        assert torch.equal(mlp(h, whole), lookup)  # the cached tables, not new ones
        assert all(a is b for a, b in zip(mlp._tables[2], tables))
        with pytest.raises(ValueError, match="has 575 fibers"):
            mlp(h[:-1], whole._replace(rows=whole.rows[:-1], cols=whole.cols[:-1]))
    with torch.inference_mode():
        assert torch.equal(mlp(h, whole), lookup)
    optimiser = torch.optim.SGD(mlp.parameters(), lr=0.1)
    mlp(h, whole).square().mean().backward()  # with autograd: the per-fiber path
    optimiser.step()
    with torch.no_grad():
        assert not torch.equal(mlp(h, whole), lookup)
        assert torch.equal(mlp(h, whole), mlp(h, whole._replace(maps=0)))
    with torch.no_grad():
        mlp.cond_y.weight.copy_(torch.randn_like(mlp.cond_y.weight))  # as load_state_dict does
        assert torch.equal(mlp(h, whole), mlp(h, whole._replace(maps=0)))
    state = {k: torch.randn_like(v) for k, v in mlp.state_dict().items()}
    mlp.load_state_dict(state, assign=True)  # new weight tensors, versions starting over
    with torch.no_grad():
        assert torch.equal(mlp(h, whole), mlp(h, whole._replace(maps=0)))
    class WholeMaps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = mlp

        def forward(self, x):
            return self.mlp(x, whole)

    with torch.no_grad():
        mlp(h, whole)  # a warm cache
        traced = torch.jit.trace(WholeMaps(), (h,), check_trace=False)
    assert "index_select" in str(traced.inlined_graph)  # a tracer records the operations, not the cache


def test_schedule_warms_up_then_decays():
    lrs = [warmup_cosine(s, 100, 1e-3) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4)  # warm-up starts at lr / 10
    peak = max(lrs)
    assert lrs.index(peak) == 8 and peak <= 1e-3
    assert lrs[-1] < 2e-5 and all(a >= b for a, b in zip(lrs[8:], lrs[9:]))


def test_flows_learn_a_position_dependent_density():
    """Fibers whose mean depends on the position: after training, typical fibers are likelier
    than the same values at the wrong position."""
    torch.manual_seed(0)
    h, w, n = 4, 4, 64
    means = torch.linspace(-2, 2, h * w)
    feats = (means.view(1, 1, h, w) + 0.1 * torch.randn(n, 4, h, w))
    flows = FiberFlows([4], n_blocks=2, cond_channels=8)
    log = flows.fit_fibers([feats], epochs=30, lr=1e-2, fiber_batch=128,
                           gen=torch.Generator().manual_seed(0), progress=False)
    assert log["flow_loss"][-1] < log["flow_loss"][0]
    right = flows.loglik_maps([feats[:8]])[0]
    wrong = flows.loglik_maps([feats[:8].flip(-1).flip(-2)])[0]
    assert right.mean() > wrong.mean() + 1


def test_scores_do_not_depend_on_the_batch(toy_root):
    method, test, _, _ = _fitted(toy_root)
    images = torch.stack([test[i] for i in range(len(test))])
    together = method.predict(images)
    for i in (0, len(test) - 1):
        alone = method.predict(images[i:i + 1])
        assert torch.allclose(alone.anomaly_maps[0], together.anomaly_maps[i], atol=1e-5, rtol=0)
        assert torch.allclose(alone.image_scores[0], together.image_scores[i], atol=1e-5, rtol=0)


def test_normalisers_come_from_the_training_images(toy_root):
    method, test, train, log = _fitted(toy_root)
    cnf = method.cnf
    x = train.tensor().float() / 255
    with torch.inference_mode():
        feats = method.flow_features(x)
        logliks = cnf.loglik_maps(feats)
        maps = method.predict(x).anomaly_maps
    for level, l in enumerate(logliks):  # eq. 4: u_i is the training maximum of l / C
        assert float(cnf.u[level]) == pytest.approx(float(l.max()), abs=1e-5)
    assert float(maps.min()) == pytest.approx(0.0, abs=1e-5)  # eq. 8 with n_max from training
    assert log["n_max"] == pytest.approx(float(cnf.n_max), abs=1e-5) and len(log["flow_loss"]) == 2
    scores = method.predict(torch.stack([test[i] for i in range(len(test))])).image_scores
    assert torch.isfinite(scores).all()


def test_seeded_fit_is_deterministic_and_embeds(toy_root):
    a, test, _, _ = _fitted(toy_root)
    b, _, _, _ = _fitted(toy_root)
    images = torch.stack([test[i] for i in range(4)])
    assert torch.equal(a.predict(images).anomaly_maps, b.predict(images).anomaly_maps)
    emb = a.embed(images)
    assert set(emb) == {"source", "flow"}
    assert emb["source"].shape == emb["flow"].shape == (4, sum(a.extractor.channels))
    assert math.isfinite(float(emb["flow"].abs().sum()))
