"""MC dropout: the cached, batched sampler against the plain loop, and side effects on the model."""

from __future__ import annotations

import math

import pytest
import torch

from segqc.networks.unet import UNet
from segqc.uncertainty import create_method
from segqc.uncertainty.functional import dropout_hooks, dropout_modules, enable_dropout


@pytest.fixture()
def model() -> UNet:
    """A small U-Net with BatchNorm statistics of its own activations, so samples differ visibly."""
    torch.manual_seed(0)
    net = create_method("mcdropout").build(base_width=4)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running statistics = exact averages of the pass below
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32))
    return net.eval()


def plain_loop(model: UNet, x: torch.Tensor, samples: int) -> torch.Tensor:
    """The reference: T full forward passes with dropout on, ``(T, N, 2, H, W)``."""
    with enable_dropout(model):
        return torch.stack([torch.softmax(model(x)[:, :2], dim=1) for _ in range(samples)])


@pytest.mark.parametrize("max_batch", [1, 7, 64])  # 1 sample per decode, 2 (+ a rest of 1), all 5
def test_cached_batched_samples_equal_plain_loop(model, max_batch):
    method = create_method("mcdropout", samples=5, max_batch=max_batch)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        torch.manual_seed(11)
        expected = plain_loop(model, x, 5)
        torch.manual_seed(11)
        got = torch.cat(list(method.iter_samples(model, x)))
        after = torch.rand(1)  # the random stream continues where the plain loop's would
        torch.manual_seed(11)
        plain_loop(model, x, 5)
        assert torch.equal(after, torch.rand(1))
    assert got.shape == expected.shape == (5, 3, 2, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (expected[0] - expected[1]).abs().max() > 1e-3  # the samples really differ

    torch.manual_seed(11)
    probs, z = method.predict(model, x)
    torch.testing.assert_close(probs, expected.mean(0), atol=1e-5, rtol=0)
    assert (z >= 0).all() and (z <= math.log(2) + 1e-6).all()


def test_predict_varies_and_leaves_model_state_alone(model):
    model.center_dropout.train()  # a mixed train/eval state must come back exactly as it was
    flags = {name: m.training for name, m in model.named_modules()}
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    method = create_method("mcdropout", samples=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        first, second = method.predict(model, x), method.predict(model, x)
    assert not torch.allclose(first[0], second[0])
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())


def test_enable_dropout_restores_flags_after_an_error(model):
    model.center_dropout.train()
    with pytest.raises(RuntimeError), enable_dropout(model):
        assert all(m.training for m in dropout_modules(model))
        assert not model.bottleneck.training
        raise RuntimeError("boom")
    assert model.center_dropout.training and not model.decoder_dropout.training
    with pytest.raises(RuntimeError), dropout_hooks(model, lambda _m, out: out):
        raise RuntimeError("boom")
    assert model.center_dropout.training and all(not m._forward_hooks for m in model.modules())
