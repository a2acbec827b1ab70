"""BatchNorm folding of frozen backbones (kit/fold.py): the same maps and input gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kit.backbones import FeatureExtractor
from kit.fold import fold_batchnorm


def _torch_maps(extractor, x):
    return extractor._run_body(extractor.body, (x - extractor.mean) / extractor.std,
                               extractor.layers)


@pytest.mark.parametrize("channels_last", [True, False])
def test_folded_extractor_gives_the_maps_and_gradients_of_the_plain_one(channels_last):
    """Real Lite0 weights: every BatchNorm folded, maps and input gradients equal to float
    rounding (DifferNet's gradient maps run through the folded network)."""
    plain = FeatureExtractor("tf_efficientnet_lite0", (1, 2, 3, 4), "offline",
                             channels_last=channels_last)
    folded = FeatureExtractor("tf_efficientnet_lite0", (1, 2, 3, 4), "offline",
                              channels_last=channels_last, fold_bn=True)
    assert folded.numerics != "plain" and folded._folded > 40
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.body.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.body.modules())
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    grads = []
    for extractor in (plain, folded):
        xi = x.clone().requires_grad_(True)
        maps = _torch_maps(extractor, xi)
        sum(m.square().mean() for m in maps).backward()
        grads.append((maps, xi.grad))
    (maps_a, grad_a), (maps_b, grad_b) = grads
    for a, b in zip(maps_a, maps_b):
        assert float((a - b).detach().abs().max() / a.detach().abs().max()) < 1e-4
    # a rounding difference moves a few activations across ReLU6's kinks, which changes the
    # gradient there: the whole gradient differs by a few 1e-3 (10 seeds: at most 3.3e-3)
    assert float((grad_a - grad_b).norm() / grad_a.norm()) < 1e-2
    # the public forward with autograd runs PyTorch through the folded network
    xi = x.clone().requires_grad_(True)
    folded(xi)[-1].sum().backward()
    assert xi.grad is not None and torch.isfinite(xi.grad).all()


def test_a_trainable_encoder_keeps_its_batchnorms():
    """CLS-CNFs fine-tunes its encoder: its BatchNorm affine weights must stay separate."""
    encoder = FeatureExtractor("tf_efficientnet_lite0", (1, 2), "none", trainable=True,
                               fold_bn=True)
    assert encoder.numerics == "plain"
    assert any(isinstance(m, nn.BatchNorm2d) for m in encoder.body.modules())


class _ReadTwice(nn.Module):
    """A convolution's output read by its BatchNorm and, outside any module, by an addition:
    folding the BatchNorm would change what the addition sees."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_fold_that_changes_the_output_is_undone():
    torch.manual_seed(0)
    net = _ReadTwice().eval()
    x = torch.rand(2, 3, 8, 8)
    before = net(x)
    assert fold_batchnorm(net, lambda body, z: body(z), x) == 0
    assert isinstance(net.bn, nn.BatchNorm2d)
    assert torch.equal(net(x), before)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(_ReadTwice().train(), lambda body, z: body(z), x)
