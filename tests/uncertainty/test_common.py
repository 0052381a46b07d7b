"""Checks every registered uncertainty method: new methods are covered without a new test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segqc.segmenter import Segmenter
from segqc.uncertainty import METHODS, create_method
from tests.uncertainty.conftest import random_images, read_out


@pytest.mark.parametrize("name", METHODS.names())
def test_method_trains_and_predicts(name, tiny_data):
    train, test = tiny_data
    seg = Segmenter(name, base_width=4, epochs=1, device="cpu", progress=False).fit(train)
    pred = seg.predict(test.images)
    n, h, w = test.masks.shape
    assert pred.probs.shape == pred.mask.shape == pred.uncertainty.shape == (n, h, w)
    assert np.isfinite(pred.uncertainty).all() and (pred.uncertainty >= 0).all()
    assert ((pred.probs >= 0) & (pred.probs <= 1)).all()
    assert set(np.unique(pred.mask)) <= {0, 1}
    assert all(np.isfinite(h) for h in seg.history_)


@pytest.mark.parametrize("name", METHODS.names())
def test_predict_leaves_batchnorm_statistics_alone(name):
    method = create_method(name)
    model = method.build(base_width=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    read_out(method, model, random_images(2))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", METHODS.names())
def test_state_round_trip(name, tiny_data):
    train, test = tiny_data
    seg = Segmenter(name, base_width=4, epochs=1, device="cpu", progress=False).fit(train.subset(range(8)))
    tensors, config = seg.state()
    again = Segmenter.from_state(tensors, config)
    a = seg.predict(test.images[:4], rng=0)
    b = again.predict(test.images[:4], rng=0)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
    np.testing.assert_allclose(a.uncertainty, b.uncertainty, atol=1e-6)


def test_msp_value():
    method = create_method("msp")

    class Fixed(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(1, 2, 1, 2)
            out[0, 1, 0, 0] = np.log(3.0)  # softmax (0.25, 0.75) -> z = 0.25
            return out  # second pixel: (0.5, 0.5) -> z = 0.5

    probs, z = method.head(Fixed()(None))
    torch.testing.assert_close(z, torch.tensor([[[0.25, 0.5]]]))
    torch.testing.assert_close(probs[0, 1, 0], torch.tensor([0.75, 0.5]))


STOCHASTIC = [name for name in METHODS.names() if create_method(name).stochastic]


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_read_out_is_seeded(name, tiny_data):
    """Two unseeded read-outs differ; two with the same seed agree exactly, on a fresh segmenter too."""
    train, test = tiny_data
    seg = Segmenter(name, base_width=4, epochs=1, device="cpu", progress=False).fit(train.subset(range(8)))
    with torch.no_grad():
        seg.model_.head.weight.mul_(50)  # after one epoch the outputs are nearly flat: spread them
    images = test.images[:3]
    first, second = seg.predict(images), seg.predict(images)
    assert np.abs(first.uncertainty - second.uncertainty).max() > 1e-6
    unseeded = [Segmenter.from_state(*seg.state()).predict(images, rng=np.random.default_rng()) for _ in "ab"]
    assert np.abs(unseeded[0].uncertainty - unseeded[1].uncertainty).max() > 1e-6
    a, b = seg.predict(images, rng=7), Segmenter.from_state(*seg.state()).predict(images, rng=7)
    np.testing.assert_array_equal(a.uncertainty, b.uncertainty)
    np.testing.assert_array_equal(a.probs, b.probs)


def test_stochastic_flag_matches_the_read_out():
    assert "mcdropout" in STOCHASTIC and not {"msp", "hcnn", "lce", "tta", "ensemble"} & set(STOCHASTIC)
