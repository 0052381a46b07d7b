"""Checks every registered quality predictor."""

from __future__ import annotations

import numpy as np
import pytest

from segqc.errors import NotFittedError
from segqc.metrics import jaccard
from segqc.quality import PREDICTORS, create_predictor
from segqc.types import QualitySamples


def samples(n: int = 24, size: int = 32, seed: int = 0) -> QualitySamples:
    from segqc.data.synthetic import make_synthetic

    images, true_masks, ids = make_synthetic(n, size, seed=seed)
    rng = np.random.default_rng(seed)
    # Predicted masks of varied quality: the truth with a random band of pixels flipped.
    masks = true_masks.copy()
    for i in range(n):
        rows = rng.integers(0, size, 2)
        masks[i, rows.min() : rows.max() + 1] ^= 1
    unc = rng.random((n, size, size)).astype(np.float32)
    return QualitySamples(images, masks, unc, jaccard(masks, true_masks), true_masks, ids)


def fast(name: str):
    params = create_predictor(name).get_params()
    kw = {
        k: v
        for k, v in {"epochs": 1, "base_width": 4, "device": "cpu", "progress": False}.items()
        if k in params
    }
    return create_predictor(name, **kw)


@pytest.mark.parametrize("name", PREDICTORS.names())
def test_fit_predict(name):
    train, test = samples(seed=0), samples(12, seed=1)
    predictor = fast(name)
    assert predictor.fit(train) is predictor
    q = predictor.predict(test)
    assert q.shape == (12,) and np.isfinite(q).all() and ((q >= 0) & (q <= 1)).all()


@pytest.mark.parametrize("name", PREDICTORS.names())
def test_predict_before_fit(name):
    with pytest.raises(NotFittedError):
        fast(name).predict(samples(4))


@pytest.mark.parametrize("name", PREDICTORS.names())
def test_fit_needs_targets(name):
    s = samples(4)
    s.jaccard = None
    with pytest.raises(ValueError, match="true Jaccard"):
        fast(name).fit(s)


def test_uncertainty_input_matters():
    """g(x, y^, z) must read z: changing only the maps changes its predictions."""
    train = samples(seed=0)
    predictor = fast("uncertainty").fit(train)
    other = samples(seed=0)
    other.uncertainty = other.uncertainty[::-1].copy() * 3
    assert not np.allclose(predictor.predict(train), predictor.predict(other))
    baseline = fast("no-uncertainty").fit(train)
    np.testing.assert_allclose(baseline.predict(train), baseline.predict(other))
