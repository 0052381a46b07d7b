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


def _model(placement: str = "center") -> UNet:
    """A small U-Net with BatchNorm statistics of its own activations, so samples differ visibly."""
    torch.manual_seed(0)
    net = create_method("mcdropout", placement=placement).build(base_width=4)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running statistics = exact averages of the pass below
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32))
    return net.eval()


@pytest.fixture()
def model() -> UNet:
    return _model()


def plain_loop(model: UNet, images: np.ndarray, samples: int, seed: int) -> torch.Tensor:
    """The reference: T full forward passes, each with the dropout masks ``read_out`` draws for it.

    The masks are drawn as ``MCDropout.read_out`` draws them: sample by sample, one array of ``n``
    images per dropout call, whatever ``max_batch`` is.
    """
    rng, n = np.random.default_rng(seed), len(images)
    x = Normalize([0.5] * 3, [0.25] * 3)(torch.from_numpy(images))
    layout = dropout_layout(model, model.encode(x))
    out = []
    for _ in range(samples):
        rows = iter([torch.from_numpy(dropout_mask(rng, p, (n, *shape))) for p, shape in layout])
        with torch.inference_mode(), dropout_hooks(model, lambda _m, o, rows=rows: o * next(rows)):
            out.append(torch.softmax(model(x)[:, :2], dim=1))
    return torch.stack(out)


@pytest.mark.parametrize("placement", ["center", "segnet"])
@pytest.mark.parametrize("max_batch", [1, 7, 64, None])  # 1 sample per decode, 2 (+ 1), all 5, by pixels
def test_cached_batched_read_out_equals_plain_loop(placement, max_batch):
    model = _model(placement)
    method = create_method("mcdropout", samples=5, max_batch=max_batch, placement=placement)
    images = random_images(3)
    expected = plain_loop(model, images, 5, seed=11)  # the same samples for every max_batch
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


def test_placement_setting_training_key_and_network():
    from segqc.errors import SettingsError
    from segqc.networks.unet import DROPOUT_PLACEMENTS
    from segqc.uncertainty.mcdropout import PLACEMENTS

    assert tuple(DROPOUT_PLACEMENTS) == PLACEMENTS  # the torch-free copy of the names
    center, segnet = create_method("mcdropout"), create_method("mcdropout", placement="segnet")
    assert center.get_params() == {"samples": 20, "max_batch": None, "placement": "center"}
    assert segnet.get_params()["placement"] == "segnet"
    # center: msp's f, trained once for both; segnet: its own f, whatever the read-out settings
    assert center.training_key() == create_method("msp").training_key() == "ce"
    assert segnet.training_key() == "ce-segnet" != center.training_key()
    assert create_method("mcdropout", placement="segnet", samples=3).training_key() == "ce-segnet"
    assert create_method("mcdropout", placement="center", samples=3).training_key() == "ce"
    assert center.build(base_width=4).dropout_placement == "center"
    net = segnet.build(base_width=4, dropout=0.3)
    assert net.dropout_placement == "segnet"
    assert [m.p for m in dropout_modules(net)] == [0.3] * 5
    with pytest.raises(SettingsError, match="placement must be one of center, segnet, got 'middle'"):
        create_method("mcdropout", placement="middle")


def test_segnet_samples_spread_and_layout():
    model = _model("segnet")
    method = create_method("mcdropout", samples=8, placement="segnet")
    images = random_images(2)
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    graphs, layout = method.graphs(model, normalize, torch.from_numpy(images[:1]))
    assert [c["shape"] for c in layout["dropout"]] == [
        [16, 8, 8],
        [32, 4, 4],
        [64, 2, 2],
        [32, 4, 4],
        [16, 8, 8],
    ]
    assert graphs["f_encode"].outputs == ["feat0", "feat1", "feat2"]
    assert graphs["f_decode"].inputs == ["feat0", "feat1", "feat2", *(f"mask{i}" for i in range(5))]
    samples = plain_loop(model, images, 8, seed=3)
    assert samples.std(0).max() > 1e-2  # a nonzero spread between dropout samples
    probs, z = read_out(method, model, images, seed=3)
    assert z.max() > 1e-3 and not np.allclose(probs, read_out(method, model, images, seed=4)[0])


def test_segnet_segmenter_round_trip(tiny_data):
    """A segnet f trains with its own dropout layers, and loads back to the same network and samples."""
    from segqc.segmenter import Segmenter

    train, test = tiny_data
    params = {"placement": "segnet", "samples": 4}
    seg = Segmenter("mcdropout", method_params=params, base_width=4, epochs=1, device="cpu", progress=False)
    seg.fit(train.subset(range(8)))
    assert seg.model_.dropout_placement == "segnet" and seg.method_.get_params()["placement"] == "segnet"
    tensors, config = seg.state()
    assert config["params"]["method_params"] == params
    again = Segmenter.from_state(tensors, config)
    assert again.model_.dropout_placement == "segnet"
    a, b = seg.predict(test.images[:3], rng=5), again.predict(test.images[:3], rng=5)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.uncertainty, b.uncertainty)
    center = Segmenter("mcdropout", base_width=4, epochs=1, device="cpu", progress=False)
    center.fit(train.subset(range(8)))
    sc = center.state()[0]  # the same seed and init, but other dropout draws in training: another f
    assert sc.keys() == tensors.keys() and not all(torch.equal(sc[k], tensors[k]) for k in sc)
