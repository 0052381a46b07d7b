"""Hand-checked values of the uncertainty methods' losses and read-outs on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segqc.errors import SegQCError
from segqc.networks.functional import entropy, heteroscedastic_nll, hinted_nll
from segqc.uncertainty import create_method
from tests.uncertainty.conftest import random_images, read_out


def pixel(*values: float) -> torch.Tensor:
    """A ``(1, C, 1, 1)`` network output from its channel values."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def softplus_inverse(v: float) -> float:
    return math.log(math.expm1(v))


class Fixed(torch.nn.Module):
    """A "network" that ignores its input and returns a fixed output."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output


# -- helpers ------------------------------------------------------------------------------------------
def test_entropy_values():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]]).view(3, 2, 1, 1)
    expected = [math.log(2), 0.0, -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))]
    torch.testing.assert_close(entropy(p).flatten(), torch.tensor(expected))


# -- hcnn ---------------------------------------------------------------------------------------------
def test_heteroscedastic_nll_without_noise_is_cross_entropy():
    logits = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 2, (2, 3, 3), generator=torch.Generator().manual_seed(1))
    noise = torch.randn(5, 2, 2, 3, 3)
    loss = heteroscedastic_nll(logits, torch.zeros(2, 3, 3), target, noise)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))


def test_heteroscedastic_nll_by_hand():
    # sigma = 1, logits (0, 0), class 0, two samples with noise (1, -1) and (0, 0):
    # softmax_0 = 1 / (1 + e^-2) and 1/2; loss = -log of their mean.
    noise = torch.tensor([[1.0, -1.0], [0.0, 0.0]]).view(2, 1, 2, 1, 1)
    loss = heteroscedastic_nll(
        pixel(0.0, 0.0), torch.ones(1, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long), noise
    )
    expected = -math.log((1 / (1 + math.exp(-2)) + 0.5) / 2)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.3705, abs=1e-4)


def test_heteroscedastic_nll_matches_numpy_with_seeded_noise():
    rng = np.random.default_rng(7)
    t, n, h, w = 50, 2, 3, 4
    logits, raw_var = rng.normal(size=(n, 2, h, w)), rng.uniform(0.1, 3.0, size=(n, h, w))
    target, eps = rng.integers(0, 2, size=(n, h, w)), rng.normal(size=(t, n, 2, h, w))
    noisy = logits[None] + np.sqrt(raw_var)[None, :, None] * eps
    soft = np.exp(noisy) / np.exp(noisy).sum(axis=2, keepdims=True)
    p_true = np.take_along_axis(soft, target[None, :, None].repeat(t, 0), axis=2)[:, :, 0]
    expected = -np.log(p_true.mean(axis=0)).mean()
    got = heteroscedastic_nll(
        torch.tensor(logits), torch.tensor(raw_var), torch.tensor(target), torch.tensor(eps)
    )
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_heteroscedastic_nll_two_class_form_has_the_general_value_and_gradients():
    """Two classes take a cheaper closed form (softplus of the margin); it must be the softmax form."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    variance = (torch.rand(3, 4, 5, generator=g, dtype=torch.float64) * 2).requires_grad_()
    target = torch.randint(0, 2, (3, 4, 5), generator=g)
    noise = torch.randn(20, 3, 2, 4, 5, generator=g, dtype=torch.float64)
    noisy = logits.unsqueeze(0) + variance.sqrt()[None, :, None] * noise
    log_p = noisy.log_softmax(2).gather(2, target[None, :, None].expand(20, -1, 1, -1, -1)).squeeze(2)
    general = (math.log(20) - torch.logsumexp(log_p, 0)).mean()
    fast = heteroscedastic_nll(logits, variance, target, noise)
    torch.testing.assert_close(fast, general, rtol=1e-12, atol=0)
    grads = torch.autograd.grad(fast, (logits, variance))
    torch.testing.assert_close(
        grads, torch.autograd.grad(general, (logits, variance)), rtol=1e-10, atol=1e-14
    )
    # more classes: the general form, which for three classes is not the two-class one
    three = heteroscedastic_nll(
        torch.zeros(1, 3, 1, 1),
        torch.zeros(1, 1, 1),
        torch.zeros(1, 1, 1, dtype=torch.long),
        torch.zeros(2, 1, 3, 1, 1),
    )
    assert three.item() == pytest.approx(math.log(3))


def test_hcnn_loss_uses_softplus_variance_and_global_rng():
    method = create_method("hcnn", samples=1000)
    variance = 0.8
    output = pixel(0.3, -0.4, softplus_inverse(variance - 1e-6))
    target = torch.ones(1, 1, 1, dtype=torch.long)
    torch.manual_seed(3)
    loss = method.loss(output, target)
    torch.manual_seed(3)
    noise = torch.randn(1000, 1, 2, 1, 1)
    expected = heteroscedastic_nll(output[:, :2], torch.full((1, 1, 1), variance), target, noise)
    torch.testing.assert_close(loss, expected)
    # larger noise pulls the probability of the (losing) true class towards 1/2: lower loss than CE
    assert loss.item() < F.cross_entropy(output[:, :2], target).item()


def test_hcnn_tiny_variance_is_cross_entropy_and_stable():
    method = create_method("hcnn")
    output = pixel(2.0, -1.0, -30.0).repeat(2, 1, 3, 3).requires_grad_()
    target = torch.zeros(2, 3, 3, dtype=torch.long)
    loss = method.loss(output, target)
    assert loss.item() == pytest.approx(F.cross_entropy(output[:, :2], target).item(), abs=1e-3)
    loss.backward()
    assert torch.isfinite(output.grad).all()


def test_hcnn_predict_is_softmax_and_variance():
    variance = 2.5
    out = pixel(1.0, 0.0, softplus_inverse(variance - 1e-6))
    probs, z = create_method("hcnn").head(out)
    torch.testing.assert_close(probs, torch.softmax(out[:, :2], 1))
    assert z.shape == (1, 1, 1) and z.item() == pytest.approx(variance, rel=1e-5)


# -- lce ----------------------------------------------------------------------------------------------
def test_hinted_nll_by_hand():
    probs = pixel(0.8, 0.2)  # true class 1 has p = 0.2
    target = torch.ones(1, 1, 1, dtype=torch.long)
    c = torch.full((1, 1, 1), 0.25)
    hinted = hinted_nll(probs, c, target, torch.ones(1, 1, 1, dtype=torch.bool))
    plain = hinted_nll(probs, c, target, torch.zeros(1, 1, 1, dtype=torch.bool))
    assert hinted.item() == pytest.approx(-math.log(0.25 * 0.2 + 0.75), abs=1e-6)  # p' = 0.8
    assert plain.item() == pytest.approx(-math.log(0.2), abs=1e-6)
    # confidence 0 and probability 0 stay finite thanks to the clamp
    assert math.isfinite(hinted_nll(pixel(1.0, 0.0), torch.zeros(1, 1, 1), target, torch.tensor(True)).item())


def test_lce_full_confidence_is_cross_entropy():
    method = create_method("lce", hints="pixel")
    output = torch.cat([torch.randn(2, 2, 4, 4), torch.full((2, 1, 4, 4), 40.0)], dim=1)  # c = 1
    target = torch.randint(0, 2, (2, 4, 4))
    torch.testing.assert_close(method.loss(output, target), F.cross_entropy(output[:, :2], target))


def test_lce_loss_by_hand_and_lambda_update():
    method = create_method("lce", hints="image", budget=0.3, lambda_init=0.1)
    output = pixel(math.log(0.8), math.log(0.2), math.log(0.25 / 0.75))  # p = (0.8, 0.2), c = 0.25
    target = torch.ones(1, 1, 1, dtype=torch.long)
    conf_term = 0.1 * math.log(4)  # lambda * -log c, with lambda before the update
    values = set()
    for seed in range(20):
        torch.manual_seed(seed)
        loss = method.loss(output, target).item()
        method._lambda = 0.1
        hinted, plain = -math.log(0.8) + conf_term, -math.log(0.2) + conf_term
        assert loss == pytest.approx(hinted, abs=1e-5) or loss == pytest.approx(plain, abs=1e-5)
        values.add(round(loss, 4))
    assert len(values) == 2  # both hinted and unhinted steps happen

    method.loss(output, target)  # -log c = 1.39 > budget: more weight on the confidence loss
    assert method.lambda_ == pytest.approx(0.1 / 0.99)
    confident = pixel(0.0, 0.0, 10.0)  # -log c ~ 5e-5 < budget: less weight
    method.loss(confident, target)
    assert method.lambda_ == pytest.approx(0.1 / 0.99 / 1.01)
    assert "_lambda" not in method.get_params() and method.get_params()["lambda_init"] == 0.1


def test_lce_hint_masks():
    target = torch.zeros(64, 8, 8, dtype=torch.long)
    torch.manual_seed(0)
    per_image = create_method("lce", hints="image").draw_hints(target)
    per_pixel = create_method("lce", hints="pixel").draw_hints(target)
    assert per_image.shape == (64, 1, 1) and per_pixel.shape == (64, 8, 8)
    assert 0.3 < per_image.float().mean() < 0.7 and 0.45 < per_pixel.float().mean() < 0.55


def test_lce_predict_is_softmax_and_one_minus_confidence():
    out = pixel(0.0, 1.0, math.log(0.9 / 0.1))  # c = 0.9
    probs, z = create_method("lce").head(out)
    torch.testing.assert_close(probs, torch.softmax(out[:, :2], 1))
    assert z.item() == pytest.approx(0.1, abs=1e-6)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("lce", {"hints": "batch"}),
        ("lce", {"budget": 0}),
        ("hcnn", {"samples": 0}),
        ("mcdropout", {"samples": 0}),
    ],
)
def test_bad_settings_raise(name, params):
    with pytest.raises(SegQCError):
        create_method(name, **params)


# -- ranges of z on a network with realistic activations -------------------------------------------------
@pytest.mark.parametrize(
    ("name", "low", "high"), [("mcdropout", 0.0, math.log(2)), ("hcnn", 1e-6, math.inf), ("lce", 0.0, 1.0)]
)
def test_uncertainty_ranges(name, low, high):
    torch.manual_seed(0)
    method = create_method(name, **({"samples": 4} if name == "mcdropout" else {}))
    model = method.build(base_width=4)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running statistics = exact averages of the pass below
    with torch.no_grad():
        model.head.weight.mul_(5)  # spread the outputs so the ranges are actually exercised
        model(torch.randn(8, 3, 32, 32))
    model.eval()
    probs, z = read_out(method, model, random_images(4))
    assert z.shape == (4, 32, 32) and probs.shape == (4, 32, 32)
    assert (z >= low - 1e-6).all() and (z <= high + 1e-6).all()
    assert z.std() > 0  # not a constant map
    assert ((probs >= 0) & (probs <= 1)).all()
