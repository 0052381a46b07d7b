"""Thresholds and bounds with guarantees (segqc.calibration), checked by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from segqc.calibration import guaranteed_threshold
from segqc.errors import SegQCError
from segqc.gate import conformal_margin


def _draw(rng: np.random.Generator, n: int, failure_share: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Exchangeable images: failures' predicted Jaccard ~ Beta(2, 5), the others' ~ Beta(5, 2)."""
    failed = rng.random(n) < failure_share
    true = np.where(failed, rng.uniform(0.0, 0.69, n), rng.uniform(0.7, 1.0, n))
    predicted = np.where(failed, rng.beta(2, 5, n), rng.beta(5, 2, n))
    return predicted, true


@pytest.mark.parametrize(("recall", "confidence"), [(0.9, 0.9), (0.8, 0.95)])
def test_recall_guarantee_holds_over_many_calibration_draws(recall, confidence):
    """Over 1000 calibration sets, the true failure recall of the chosen threshold (the Beta(2, 5) CDF at
    it) is >= R in at least a share C of them (less 3 binomial standard deviations)."""
    rng = np.random.default_rng(0)
    draws = 1000
    held = 0
    for _ in range(draws):
        predicted, true = _draw(rng, 300)
        threshold = guaranteed_threshold(predicted, true, recall, confidence, 0.7)["threshold"]
        held += beta.cdf(threshold, 2, 5) >= recall
    slack = 3 * np.sqrt(confidence * (1 - confidence) / draws)
    assert held / draws >= confidence - slack


def test_guaranteed_threshold_record_and_cost():
    predicted, true = _draw(np.random.default_rng(1), 400)
    chosen = guaranteed_threshold(predicted, true, 0.9, 0.9, 0.7)
    failures = np.sort(predicted[true < 0.7])
    assert chosen["n_heldout_failures"] == failures.size and chosen["recall_lower_bound"] >= 0.9
    assert chosen["achieved_recall"] >= 0.9 and chosen["threshold"] > failures[chosen["order"] - 1]
    assert chosen["referral_rate"] == pytest.approx((predicted < chosen["threshold"]).mean())
    assert chosen["min_failures_needed"] == 22  # 0.9 ** 22 < 0.1 <= 0.9 ** 21


def test_too_few_failures_for_the_guarantee_says_how_many():
    predicted, true = np.array([0.2, 0.3, 0.9, 0.8]), np.array([0.1, 0.5, 0.9, 0.95])
    with pytest.raises(SegQCError, match="hold 2 failures.*needs at least 22"):
        guaranteed_threshold(predicted, true, 0.9, 0.9, 0.7)
    with pytest.raises(SegQCError, match="in \\(0, 1\\)"):
        guaranteed_threshold(predicted, true, 1.0, 0.9, 0.7)


def test_conformal_lower_bound_covers_over_many_draws():
    """Split conformal: P(true >= predicted - margin) >= C, averaged over calibration draws."""
    rng = np.random.default_rng(2)
    confidence, covered, total = 0.9, 0, 0
    for _ in range(300):
        truth = rng.uniform(0.3, 1.0, 400)
        predicted = np.clip(truth + rng.normal(0.02, 0.08, 400), 0, 1)
        margin = conformal_margin(predicted[:200], truth[:200], confidence)["margin"]
        covered += (truth[200:] >= predicted[200:] - margin).sum()
        total += 200
    assert covered / total >= confidence - 0.01


def test_conformal_margin_with_too_few_images_gives_no_bound():
    record = conformal_margin(np.array([0.8, 0.7]), np.array([0.6, 0.9]), 0.9)
    assert record == {"confidence": 0.9, "margin": 1.0, "n_heldout": 2, "guaranteed": False}
