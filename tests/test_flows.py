"""Tests of kit/flows.py: exact inverses, log-determinants against autograd, seeding, training."""

import io
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from kit.flows import (
    CouplingBlock,
    Flow,
    log_likelihood,
    nll,
    positional_encoding_2d,
    soft_clamp,
    subnet_conv,
    subnet_fc,
)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: extra threads only add synchronisation, and on a busy 2-core
    machine the waiting threads made the training test 15x slower (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomise(module, seed=0, gain=1.0):
    """Random weights everywhere, including the zero-initialised last layers; otherwise every
    block is a bare permutation and inverse and logdet checks would pass trivially. Weights are
    N(0, gain^2 / fan_in) so that s is of order 1 at any width, not saturated at the clamp."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            std = gain / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.1 * gain
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)
    return module


def make_flow(channels, n_blocks=4, factory=None, cond_channels=0, clamp_kind="atan",
              clamp=3.0, two_sided=True, seed=0, mixing="permutation", global_affine=False):
    """A small float64 flow with random weights."""
    factory = factory or subnet_fc(hidden=16, depth=2)
    flow = Flow.build(channels, n_blocks, factory, clamp=clamp, clamp_kind=clamp_kind,
                      cond_channels=cond_channels, seed=seed, two_sided=two_sided,
                      mixing=mixing, global_affine=global_affine)
    return randomise(flow.double(), seed=seed + 100)


def autograd_logdets(flow, x, cond=None):
    """log|det J| of the forward map per sample, from the full Jacobian of the flattened map."""
    out = []
    for i in range(x.shape[0]):
        c = cond if cond is None or cond.shape[0] == 1 else cond[i:i + 1]
        shape = (1, *x.shape[1:])

        def f(v, c=c, shape=shape):
            return flow(v.reshape(shape), c)[0].flatten()

        jac = jacobian(f, x[i].flatten())  # [D, D]
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


# Cases shared by the invertibility and log-determinant tests:
# name -> (flow, x, cond); all have random weights and float64.
def cases():
    gen = torch.Generator().manual_seed(1)
    pe = positional_encoding_2d(4, 2, 3, dtype=torch.float64)[None]  # [1, 4, 2, 3]
    return {
        "vector": (make_flow(6), torch.randn(5, 6, generator=gen, dtype=torch.float64), None),
        "odd": (make_flow(5, clamp_kind="tanh"), torch.randn(5, 5, generator=gen, dtype=torch.float64), None),
        "one_sided": (make_flow(6, two_sided=False), torch.randn(5, 6, generator=gen, dtype=torch.float64), None),
        "conditional": (make_flow(6, cond_channels=3, clamp=1.9, clamp_kind="tanh"),
                        torch.randn(5, 6, generator=gen, dtype=torch.float64),
                        torch.randn(5, 3, generator=gen, dtype=torch.float64)),
        "conv": (make_flow(3, factory=subnet_conv(hidden=8)),
                 torch.randn(3, 3, 2, 3, generator=gen, dtype=torch.float64), None),
        "conv_conditional": (make_flow(3, factory=subnet_conv(hidden=8), cond_channels=4),
                             torch.randn(3, 3, 2, 3, generator=gen, dtype=torch.float64), pe),
        # CFlow-AD's AllInOneBlock: one-sided, a random rotation between couplings, global affine
        "cflow_block": (make_flow(6, cond_channels=3, clamp=1.9, clamp_kind="tanh", two_sided=False,
                                  mixing="orthogonal", global_affine=True),
                        torch.randn(5, 6, generator=gen, dtype=torch.float64),
                        torch.randn(5, 3, generator=gen, dtype=torch.float64)),
        "conv_rotation_affine": (make_flow(4, factory=subnet_conv(hidden=8), mixing="orthogonal",
                                           global_affine=True),
                                 torch.randn(3, 4, 2, 3, generator=gen, dtype=torch.float64), None),
    }


CASE_NAMES = list(cases())


# ----------------------------------------------------------------------------------------------
# invertibility and log-determinant
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASE_NAMES)
def test_inverse_of_forward_is_identity(name):
    flow, x, cond = cases()[name]
    z, logdet = flow(x, cond)
    assert z.shape == x.shape and logdet.shape == (x.shape[0],)
    assert logdet.abs().max() > 0.5  # the random weights really scale (a bare permutation has 0)
    torch.testing.assert_close(flow.inverse(z, cond), x, atol=1e-5, rtol=0)
    # and the other way round: forward(inverse(z)) == z
    torch.testing.assert_close(flow(flow.inverse(x, cond), cond)[0], x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_logdet_matches_autograd_jacobian(name):
    flow, x, cond = cases()[name]
    _, logdet = flow(x, cond)
    assert logdet.abs().max() > 0.1  # not trivially zero
    torch.testing.assert_close(logdet, autograd_logdets(flow, x, cond), atol=1e-6, rtol=0)


def test_large_vector_flow_inverts():
    """DifferNet's shape: 768-D vectors, 8 blocks (narrow subnets to stay fast)."""
    flow = make_flow(768, n_blocks=8, factory=subnet_fc(hidden=64, depth=3), seed=3)
    x = torch.randn(4, 768, dtype=torch.float64)
    z, _ = flow(x)
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-5, rtol=0)


def test_fresh_flow_is_a_permutation():
    """Zero-initialised last layers: s = t = 0, so a new flow only permutes its input."""
    flow = Flow.build(7, 3, subnet_fc(hidden=8, depth=2), seed=0)
    x = torch.randn(4, 7)
    expected = x
    for block in flow.blocks:
        expected = expected[:, block.perm]
    z, logdet = flow(x)
    assert torch.equal(z, expected)
    assert torch.equal(logdet, torch.zeros(4))


def test_condition_is_checked_and_broadcast():
    flow = make_flow(4, cond_channels=2)
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="needs a condition"):
        flow(x)
    with pytest.raises(ValueError, match="does not fit"):
        flow(x, torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="without a condition"):
        make_flow(4)(x, torch.randn(3, 2, dtype=torch.float64))
    # a [1, P] condition is the same as repeating it for every sample
    c = torch.randn(1, 2, dtype=torch.float64)
    torch.testing.assert_close(flow(x, c)[0], flow(x, c.expand(3, 2))[0])
    # and the condition matters
    assert not torch.allclose(flow(x, c)[0], flow(x, -c)[0])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="at least 2"):
        CouplingBlock(1, subnet_fc(4))
    with pytest.raises(ValueError, match="clamp_kind"):
        CouplingBlock(4, subnet_fc(4), clamp_kind="hard")
    with pytest.raises(ValueError, match="odd"):
        subnet_conv(8, kernel=2)
    with pytest.raises(ValueError, match="depth"):
        subnet_fc(8, depth=0)


# ----------------------------------------------------------------------------------------------
# soft clamp, likelihood helpers, positional encoding
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, slope", [("atan", 2 / math.pi), ("tanh", 1.0)])
def test_soft_clamp_bounded_and_linear_near_zero(kind, slope):
    alpha = 3.0
    s = torch.linspace(-30, 30, 6001, dtype=torch.float64)
    out = soft_clamp(s, alpha, kind)
    assert out.abs().max() < alpha  # strictly inside (tanh rounds to alpha only beyond ~|s| = 55)
    assert soft_clamp(torch.tensor([-1e30, 1e30]), alpha, kind).abs().max() <= alpha
    assert torch.all(out[1:] >= out[:-1])  # monotone
    small = torch.linspace(-1e-3, 1e-3, 11, dtype=torch.float64)
    # eq. 2 has slope 2/pi at 0 (a scaled identity); the tanh clamp is the identity there
    torch.testing.assert_close(soft_clamp(small, alpha, kind), slope * small, atol=1e-9, rtol=0)
    with pytest.raises(ValueError):
        soft_clamp(s, alpha, "relu")


def test_nll_and_log_likelihood_agree_with_gaussian_density():
    z = torch.randn(5, 3, 2, dtype=torch.float64)
    logdet = torch.randn(5, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1) + logdet
    torch.testing.assert_close(log_likelihood(z, logdet), expected)
    torch.testing.assert_close(nll(z, logdet), 0.5 * z.pow(2).flatten(1).sum(1) - logdet)


def test_positional_encoding():
    pe = positional_encoding_2d(8, 5, 7)
    assert pe.shape == (8, 5, 7) and pe.dtype == torch.float32
    assert pe.abs().max() <= 1.0
    # first half depends on the column only, second half on the row only
    assert torch.equal(pe[:4], pe[:4, :1].expand(4, 5, 7))
    assert torch.equal(pe[4:], pe[4:, :, :1].expand(4, 5, 7))
    torch.testing.assert_close(pe[0, 0], torch.sin(torch.arange(7.0)))  # lowest frequency is 1
    torch.testing.assert_close(pe[1, 0], torch.cos(torch.arange(7.0)))
    torch.testing.assert_close(pe[4, :, 0], torch.sin(torch.arange(5.0)))
    for bad in (6, 2, 130):
        with pytest.raises(ValueError, match="divisible by 4"):
            positional_encoding_2d(bad, 4, 4)


# ----------------------------------------------------------------------------------------------
# seeding and state dicts
# ----------------------------------------------------------------------------------------------

def perms(flow):
    return [block.perm for block in flow.blocks]


def test_seeded_build_is_reproducible_and_saved():
    factory = subnet_fc(hidden=8, depth=2)
    a = Flow.build(16, 3, factory, seed=0)
    b = Flow.build(16, 3, factory, seed=0)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = Flow.build(16, 3, factory, seed=1)
    assert all(not torch.equal(p, q) for p, q in zip(perms(a), perms(c)))
    # within a flow the blocks use different permutations, and each one is a permutation
    assert not torch.equal(perms(a)[0], perms(a)[1])
    assert all(torch.equal(p.sort().values, torch.arange(16)) for p in perms(a))

    # permutations travel in the state dict through a weights_only round trip
    randomise(a, seed=5)
    assert all(f"blocks.{i}.perm" in a.state_dict() for i in range(3))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c.load_state_dict(torch.load(buf, weights_only=True))
    assert all(torch.equal(p, q) for p, q in zip(perms(a), perms(c)))
    x = torch.randn(4, 16)
    torch.testing.assert_close(c(x)[0], a(x)[0], atol=0, rtol=0)


def test_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Flow.build(8, 2, subnet_fc(8), seed=7)
    assert torch.equal(torch.rand(3), expected)


# ----------------------------------------------------------------------------------------------
# training sanity: the flow learns a correlated Gaussian
# ----------------------------------------------------------------------------------------------

def test_flow_learns_correlated_gaussian():
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([1.0, -2.0])
    cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]])
    chol = torch.linalg.cholesky(cov)

    def draw(n):
        return mean + torch.randn(n, 2, generator=gen) @ chol.T

    train, held_out = draw(1024), draw(4000)
    flow = Flow.build(2, 4, subnet_fc(hidden=32, depth=2), clamp=3.0, seed=0)

    def held_out_nll():
        with torch.no_grad():
            return nll(*flow(held_out)).mean().item()

    before = held_out_nll()
    torch.manual_seed(0)  # pins the batch order
    steps = 200
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    # cosine decay: the last steps are small, so the end point is not Adam's noise floor
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        batch = train[torch.randint(0, len(train), (256,))]
        loss = nll(*flow(batch)).mean() / 2  # DifferNet's loss: mean nll / D
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    after = held_out_nll()

    # best possible: E[nll] = D/2 + 0.5 * log det(cov) (the 2 pi constant is not in nll)
    optimum = 1.0 + 0.5 * torch.logdet(cov).item()
    assert before > optimum + 2.0  # a permutation at init: 0.5 * E||y||^2 = 4.0
    assert after < before - 2.0
    assert after < optimum + 0.06  # measured 0.009 above; held-out noise is about 0.01

    with torch.no_grad():
        samples = flow.inverse(torch.randn(4000, 2, generator=gen))
    # measured errors about 0.02 (mean) and 0.04 (cov): the tolerances leave 3-4x room
    torch.testing.assert_close(samples.mean(0), mean, atol=0.1, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), cov, atol=0.15, rtol=0)
