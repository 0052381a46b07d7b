"""The RCA baseline: a reverse classifier taught by (x, y^), scored on references with ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from segqc.data.synthetic import make_synthetic
from segqc.errors import NotFittedError
from segqc.metrics import jaccard
from segqc.quality import create_predictor
from segqc.quality.rca import _expand, pixel_features, qda_weights
from segqc.types import QualitySamples


def reference_samples(n: int = 30, size: int = 32, seed: int = 0) -> QualitySamples:
    images, masks, ids = make_synthetic(n, size, seed=seed, lazy_fraction=0.0)
    unc = np.zeros(masks.shape, np.float32)
    return QualitySamples(images, masks.copy(), unc, np.ones(n), masks, ids)


def corrupted(n: int = 40, size: int = 32, seed: int = 1) -> tuple[QualitySamples, np.ndarray]:
    """Test samples whose masks are the truth corrupted to varied degrees, and their true Jaccard."""
    images, truth, ids = make_synthetic(n, size, seed=seed, lazy_fraction=0.0)
    rng = np.random.default_rng(seed)
    masks = truth.copy()
    for i in range(n):
        m = truth[i].astype(bool)
        level = i % 5  # 0 = exact, then increasingly wrong
        if level == 1:
            m = ndimage.binary_dilation(m, iterations=2)
        elif level == 2:
            m = np.roll(m, (size // 4, size // 4), (0, 1))
        elif level == 3:
            m = ~m
        elif level == 4:
            m = rng.random(m.shape) < 0.5
        masks[i] = m
    samples = QualitySamples(images, masks, np.zeros(masks.shape, np.float32), ids=ids)
    return samples, jaccard(masks, truth)


def test_predictions_track_true_quality():
    rca = create_predictor("rca", n_references=20).fit(reference_samples())
    test, true_j = corrupted()
    q = rca.predict(test)
    assert q.shape == (40,) and np.isfinite(q).all() and ((q >= 0) & (q <= 1)).all()
    rho = stats.spearmanr(q, true_j)[0]
    assert rho > 0.5, rho
    # exact masks are predicted clearly better than inverted or random ones
    level = np.arange(40) % 5
    assert q[level == 0].mean() > q[level >= 3].mean() + 0.2


def test_does_not_read_test_ground_truth_or_uncertainty():
    rca = create_predictor("rca", n_references=10).fit(reference_samples())
    test, _ = corrupted(10)
    q = rca.predict(test)
    test.uncertainty = np.random.default_rng(0).random(test.masks.shape).astype(np.float32)
    test.true_masks = 1 - test.masks  # would change everything if it were read
    np.testing.assert_array_equal(rca.predict(test), q)


def test_seed_and_reference_count():
    refs = reference_samples(30)
    a = create_predictor("rca", n_references=7, seed=0).fit(refs)
    b = create_predictor("rca", n_references=7, seed=0).fit(refs)
    c = create_predictor("rca", n_references=7, seed=1).fit(refs)
    assert len(a.reference_images_) == 7 and len(set(a.reference_index_.tolist())) == 7
    np.testing.assert_array_equal(a.reference_index_, b.reference_index_)
    assert not np.array_equal(a.reference_index_, c.reference_index_)
    test, _ = corrupted(10)
    np.testing.assert_array_equal(a.predict(test), b.predict(test))
    # more references than training images: all of them are used
    assert len(create_predictor("rca", n_references=100).fit(refs).reference_images_) == 30


def test_more_references_never_lower_the_best_match():
    """The prediction is a maximum over references, so a superset of references cannot score lower
    (with the same reverse classifier: a fixed prior_strength, as "auto" may choose differently)."""
    refs = reference_samples(30)
    test, _ = corrupted(10)
    small = create_predictor("rca", n_references=5, prior_strength=64.0, seed=3).fit(refs)
    full = create_predictor("rca", n_references=30, prior_strength=64.0).fit(refs)
    assert (full.predict(test) >= small.predict(test) - 1e-12).all()


def test_degenerate_masks_use_the_constant_classifier():
    refs = reference_samples(12)
    rca = create_predictor("rca", n_references=12).fit(refs)
    test, _ = corrupted(3)
    test.masks[0] = 0
    test.masks[1] = 1
    q = rca.predict(test)
    best_full = jaccard(np.ones_like(refs.true_masks), refs.true_masks).max()
    assert q[0] == 0.0  # every reference has a lesion, so "all background" scores 0 everywhere
    assert q[1] == pytest.approx(best_full)
    # a reference with an empty ground truth is matched exactly by the empty classifier
    refs.true_masks[0] = 0
    assert create_predictor("rca", n_references=12).fit(refs).predict(test)[0] == 1.0


def test_qda_weights_match_a_direct_gaussian_evaluation():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 200, 3)).astype(np.float32)
    masks = (rng.random((2, 200)) < 0.3).astype(np.uint8)
    feats[masks == 1] += 1.5
    w = qda_weights(feats, masks, prior_strength=0.0)
    x = feats[0].astype(np.float64)
    m = masks[0].astype(bool)

    def log_gauss(points, sel):
        mu, cov = points[sel].mean(0), np.cov(points[sel].T, bias=True) + 1e-4 * np.eye(3)
        d = points - mu
        inv = np.linalg.inv(cov)
        return -0.5 * np.einsum("pf,fg,pg->p", d, inv, d) - 0.5 * np.linalg.slogdet(cov)[1]

    prior = np.log((m.sum() + 1) / 202) - np.log((200 - m.sum() + 1) / 202)
    direct = log_gauss(x, m) - log_gauss(x, ~m) + prior
    np.testing.assert_allclose(_expand(feats[0]) @ w[:, 0], direct, rtol=1e-3, atol=1e-3)


def test_features_shape_and_per_image_standardisation():
    images, _, _ = make_synthetic(3, 32, seed=0)
    f = pixel_features(images)
    assert f.shape == (3, 32 * 32, 11) and f.dtype == np.float32
    np.testing.assert_allclose(f[:, :, :3].mean(1), 0.0, atol=1e-4)
    brighter = np.clip(images.astype(int) + 20, 0, 255).astype(np.uint8)  # exposure change
    assert np.abs(pixel_features(brighter)[:, :, :3] - f[:, :, :3]).mean() < 0.2


def test_needs_ground_truth_and_fit():
    refs = reference_samples(5)
    refs.true_masks = None
    with pytest.raises(ValueError, match="ground-truth masks"):
        create_predictor("rca").fit(refs)
    with pytest.raises(NotFittedError):
        create_predictor("rca").predict(corrupted(5)[0])


def test_state_round_trip():
    rca = create_predictor("rca", n_references=6, seed=2).fit(reference_samples(12))
    tensors, config = rca.state()
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    back = type(rca).from_state(tensors, config)
    test, _ = corrupted(5)
    np.testing.assert_array_equal(back.predict(test), rca.predict(test))


def test_prior_strength_is_chosen_on_held_out_training_images():
    """``"auto"`` picks prior_strength in fit, from training images only (by construction: fit gets
    the training samples and nothing else); the held-out images are training images that are not
    references, and predicting never changes the choice."""
    from segqc.quality.rca import PRIOR_STRENGTHS

    refs = reference_samples(40)
    rca = create_predictor("rca", n_references=10, n_validation=24, seed=4).fit(refs)
    assert rca.prior_strength == "auto" and rca.prior_strength_ in PRIOR_STRENGTHS
    held = rca.validation_index_
    assert len(held) == 24 and not set(held.tolist()) & set(rca.reference_index_.tolist())
    assert set(held.tolist()) <= set(range(40))
    assert set(rca.validation_spearman_) == {f"{c:g}" for c in PRIOR_STRENGTHS}
    best = max(v for v in rca.validation_spearman_.values() if np.isfinite(v))
    assert rca.validation_spearman_[f"{rca.prior_strength_:g}"] == best
    again = create_predictor("rca", n_references=10, n_validation=24, seed=4).fit(refs)
    assert again.prior_strength_ == rca.prior_strength_
    chosen = rca.prior_strength_
    test, _ = corrupted(10)
    q = rca.predict(test)
    assert rca.prior_strength_ == chosen
    fixed = create_predictor("rca", n_references=10, prior_strength=chosen, seed=4).fit(refs)
    np.testing.assert_array_equal(fixed.predict(test), q)
    assert fixed.prior_strength_ == chosen and fixed.validation_spearman_ == {}


def test_prior_strength_setting_is_checked_and_old_states_load():
    refs = reference_samples(8)
    with pytest.raises(ValueError, match="prior_strength"):
        create_predictor("rca", prior_strength="best").fit(refs)
    rca = create_predictor("rca", n_references=4, prior_strength=16.0).fit(refs)
    tensors, config = rca.state()
    # a state written before "auto": the number only in params
    old = {"params": {"n_references": 4, "prior_strength": 16.0, "chunk_size": 64, "seed": 0}}
    back = type(rca).from_state(tensors, old)
    assert back.prior_strength_ == 16.0
    test, _ = corrupted(5)
    np.testing.assert_array_equal(back.predict(test), rca.predict(test))
