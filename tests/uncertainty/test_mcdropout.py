"""MC dropout: the cached, batched read-out against the plain loop, and side effects on the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segqc.networks.functional import dropout_hooks, dropout_modules, enable_dropout
from segqc.networks.graphs import Normalize, dropout_layout
from segqc.networks.unet import UNet
from segqc.postprocess import entropy
from segqc.uncertainty import create_method
from segqc.uncertainty.mcdropout import dropout_mask
from tests.uncertainty.conftest import random_images, read_out


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


def plain_loop(model: UNet, images: np.ndarray, samples: int, max_batch: int, seed: int) -> torch.Tensor:
    """The reference: T full forward passes, each with the dropout masks ``read_out`` draws for it.

    The masks are drawn chunk by chunk as ``MCDropout.read_out`` draws them (one array per dropout call,
    ``k`` samples of ``n`` images, sample-major); sample ``t`` of image ``i`` is row ``t n + i``.
    """
    rng, n = np.random.default_rng(seed), len(images)
    x = Normalize([0.5] * 3, [0.25] * 3)(torch.from_numpy(images))
    layout = dropout_layout(model, model.encode(x))
    per_chunk, out = max(1, max_batch // n), []
    for start in range(0, samples, per_chunk):
        k = min(per_chunk, samples - start)
        masks = [dropout_mask(rng, p, (k * n, *shape)) for p, shape in layout]
        for t in range(k):
            rows = iter([torch.from_numpy(m[t * n : (t + 1) * n]) for m in masks])
            with torch.inference_mode(), dropout_hooks(model, lambda _m, o, rows=rows: o * next(rows)):
                out.append(torch.softmax(model(x)[:, :2], dim=1))
    return torch.stack(out)


@pytest.mark.parametrize("max_batch", [1, 7, 64])  # 1 sample per decode, 2 (+ a rest of 1), all 5
def test_cached_batched_read_out_equals_plain_loop(model, max_batch):
    method = create_method("mcdropout", samples=5, max_batch=max_batch)
    images = random_images(3)
    expected = plain_loop(model, images, 5, max_batch, seed=11)
    assert expected.shape == (5, 3, 2, 32, 32)
    assert (expected[0] - expected[1]).abs().max() > 1e-3  # the samples really differ
    probs, z = read_out(method, model, images, seed=11)
    mean = expected.mean(0).numpy()
    np.testing.assert_allclose(probs, mean[:, 1], atol=1e-5)
    np.testing.assert_allclose(z, entropy(mean), atol=1e-5)
    assert (z >= 0).all() and (z <= math.log(2) + 1e-6).all()


def test_dropout_mask_is_scaled_bernoulli():
    mask = dropout_mask(np.random.default_rng(0), 0.5, (200, 50))
    assert set(np.unique(mask)) == {0.0, 2.0} and 0.45 < (mask > 0).mean() < 0.55
    assert (dropout_mask(np.random.default_rng(0), 1.0, (3,)) == 0).all()


def test_read_out_varies_and_leaves_model_state_alone(model):
    model.center_dropout.train()  # a mixed train/eval state must come back exactly as it was
    flags = {name: m.training for name, m in model.named_modules()}
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    method = create_method("mcdropout", samples=3)
    images = random_images(2)
    first, second = read_out(method, model, images, seed=1), read_out(method, model, images, seed=2)
    assert not np.allclose(first[0], second[0])
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
