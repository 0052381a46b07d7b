from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from segqc.metrics import (
    HIGHER_IS_BETTER,
    QUALITY_KEYS,
    aurc,
    detection_error,
    quality_metrics,
    risk_coverage_curve,
)

# Hand-worked example, threshold 0.7: pass = [T, F, T, F].
PRED = [0.9, 0.8, 0.6, 0.5]
TRUE = [0.9, 0.6, 0.8, 0.1]


def _random(seed: int, n: int = 40, decimals: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random (predicted, true); rounding ``predicted`` creates many ties."""
    rng = np.random.default_rng(seed)
    true = rng.random(n)
    pred = true + rng.normal(0, 0.3, n)  # not clipped: clipping would tie the ends
    return (pred.round(decimals) if decimals is not None else pred), true


def _brute_detection_error(pred, true, threshold=0.7):
    pred, is_pass = np.asarray(pred), np.asarray(true) >= threshold
    best = math.inf
    for d in np.r_[-np.inf, np.unique(pred)]:  # O(n^2): every candidate cut, counted directly
        fnr = np.mean(pred[is_pass] <= d)
        fpr = np.mean(pred[~is_pass] > d)
        best = min(best, 0.5 * fnr + 0.5 * fpr)
    return best


def _brute_aurc(pred, true):
    pred, risk = np.asarray(pred), 1 - np.asarray(true)
    kth = np.sort(pred)[::-1]
    # Coverage k: everything at least as confident as the k-th item (a whole tied block enters at once).
    return np.mean([risk[pred >= kth[k - 1]].mean() for k in range(1, len(pred) + 1)])


def _record(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, w


def test_keys_and_types():
    assert QUALITY_KEYS == ("rmse", "detection_error", "auroc", "aupr_pass", "aupr_fail", "aurc", "spearman")
    assert tuple(HIGHER_IS_BETTER) == QUALITY_KEYS
    assert [k for k, v in HIGHER_IS_BETTER.items() if v] == ["auroc", "aupr_pass", "aupr_fail", "spearman"]
    m = quality_metrics(PRED, TRUE)
    assert tuple(m) == QUALITY_KEYS
    assert all(type(v) is float for v in m.values())


def test_hand_worked_example():
    m, w = _record(quality_metrics, PRED, TRUE)
    assert not w
    # Errors 0, .2, -.2, .4 -> mean square .24 / 4.
    assert m["rmse"] == pytest.approx(math.sqrt(0.06))
    # Sorted up: .5 F, .6 P, .8 F, .9 P. Cuts: below all .5; d=.5: .5*0 + .5*(1/2) = .25;
    # d=.6: .5*(1/2) + .5*(1/2) = .5; d=.8: .5*(1/2) + .5*0 = .25; d=.9: .5*1 + 0 = .5. Min .25.
    assert m["detection_error"] == pytest.approx(0.25)
    # Pass scores {.9, .6} vs fail {.8, .5}: 3 of 4 pairs ordered right.
    assert m["auroc"] == pytest.approx(0.75)
    # Pass hits at ranks 1, 3: AP = .5 * 1 + .5 * 2/3. Fail by -pred: .5 (F), .6, .8 (F): same.
    assert m["aupr_pass"] == pytest.approx(5 / 6)
    assert m["aupr_fail"] == pytest.approx(5 / 6)
    # Risks by predicted desc: .1, .4, .2, .9. Top-k means .1, .25, .7/3, .4; AURC = their mean.
    assert m["aurc"] == pytest.approx((0.1 + 0.25 + 0.7 / 3 + 0.4) / 4)
    # Ranks pred 4 3 2 1, true 4 2 3 1: sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15).
    assert m["spearman"] == pytest.approx(0.8)
    assert detection_error(PRED, TRUE) == m["detection_error"]
    assert aurc(PRED, TRUE) == m["aurc"]


def test_threshold_is_inclusive_and_configurable():
    # true == threshold passes: pass = [T, F]; predicted orders them right.
    assert detection_error([0.9, 0.1], [0.7, 0.69]) == 0.0
    # With threshold .5 both pass (one class): NaN.
    out, w = _record(detection_error, [0.9, 0.1], [0.7, 0.69], threshold=0.5)
    assert math.isnan(out) and len(w) == 1


def test_ties_in_detection_error():
    # The two .5 items (one pass, one fail) can't be separated: a cut at .5 puts both on the "<=" side.
    # Cuts: below all .5; d=.1: .5*0 + .5*(1/2) = .25; d=.5: .5*(1/2) + .5*0 = .25; d=.9: .5. Min .25
    # (splitting the tie would wrongly give 0 for one sample order).
    pred, true = [0.5, 0.5, 0.9, 0.1], [0.8, 0.2, 0.9, 0.3]
    assert detection_error(pred, true) == pytest.approx(0.25)
    assert detection_error(pred[::-1], true[::-1]) == pytest.approx(0.25)
    # All predictions equal: no cut helps.
    assert detection_error([0.4] * 4, [0.9, 0.1, 0.8, 0.2]) == 0.5


def test_ties_in_aurc():
    # Risks 0, 1, .5; the first two tie at .8 and enter together: risk .5 at k=1 and k=2, then 1.5/3 at k=3.
    # AURC = (.5 + .5 + .5) / 3 = .5 (a stable sort would give 1/3 or 2/3 depending on order).
    pred, true = [0.8, 0.8, 0.3], [1.0, 0.0, 0.5]
    assert aurc(pred, true) == pytest.approx(0.5)
    assert aurc(pred[::-1], true[::-1]) == pytest.approx(0.5)
    assert aurc([0.8, 0.8, 0.3], [0.0, 1.0, 0.5]) == pytest.approx(0.5)


def test_risk_coverage_curve():
    # Risks 0, .5, .3, 1; blocks {.9}, {.8, .8}, {.1}.
    cov, risk = risk_coverage_curve([0.9, 0.8, 0.8, 0.1], [1.0, 0.5, 0.7, 0.0])
    np.testing.assert_allclose(cov, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.8 / 3, 1.8 / 4])
    pred, true = _random(3)
    cov, risk = risk_coverage_curve(pred, true)
    assert cov.shape == risk.shape == (len(np.unique(pred)),)
    assert np.all(np.diff(cov) > 0) and cov[-1] == 1.0
    assert risk[-1] == pytest.approx(np.mean(1 - true))


def test_perfect_predictor():
    pred, true = _random(4, decimals=None)
    m, w = _record(quality_metrics, true, true)
    assert not w
    assert m["rmse"] == 0.0
    assert m["detection_error"] == 0.0
    assert m["auroc"] == m["aupr_pass"] == m["aupr_fail"] == m["spearman"] == 1.0
    # Perfect ranking gives the lowest AURC any ranking can: at most that of a noisy predictor.
    assert m["aurc"] <= aurc(pred, true)
    # A monotone transform ranks the same way: everything but rmse unchanged.
    m2 = quality_metrics(true**3, true)
    for k in QUALITY_KEYS[1:]:
        assert m2[k] == pytest.approx(m[k])


def test_reversed_predictor():
    _, true = _random(5, decimals=None)
    m = quality_metrics(1 - true, true)
    assert m["detection_error"] == 0.5
    assert m["auroc"] == 0.0
    assert m["spearman"] == pytest.approx(-1.0)
    assert m["aurc"] > quality_metrics(true, true)["aurc"]
    assert m["aurc"] == pytest.approx(_brute_aurc(1 - true, true))


@pytest.mark.parametrize(
    "true", [[0.9, 0.8, 0.75, 0.95], [0.1, 0.2, 0.69, 0.0]], ids=["all_pass", "all_fail"]
)
def test_one_class_is_nan_with_one_warning(true):
    m, w = _record(quality_metrics, PRED, true)
    assert len(w) == 1 and issubclass(w[0].category, UserWarning)
    assert "all 4 images" in str(w[0].message)
    for k in ("detection_error", "auroc", "aupr_pass", "aupr_fail"):
        assert math.isnan(m[k]), k
    for k in ("rmse", "aurc", "spearman"):
        assert math.isfinite(m[k]), k
    out, w = _record(detection_error, PRED, true)
    assert math.isnan(out) and len(w) == 1


def test_constant_input_spearman_nan_one_warning():
    m, w = _record(quality_metrics, [0.5] * 4, TRUE)
    assert len(w) == 1 and "spearman" in str(w[0].message) and "predicted" in str(w[0].message)
    assert math.isnan(m["spearman"])
    assert m["detection_error"] == 0.5 and m["auroc"] == 0.5
    # One image: one class and constant inputs, one warning for each; the rest still computed.
    m, w = _record(quality_metrics, [0.5], [0.9])
    assert len(w) == 2
    assert m["rmse"] == pytest.approx(0.4) and m["aurc"] == pytest.approx(0.1)


@pytest.mark.parametrize("seed", range(6))
def test_detection_error_matches_brute_force(seed):
    for decimals in (1, 2, None):
        pred, true = _random(seed, n=30 + 7 * seed, decimals=decimals)
        assert detection_error(pred, true) == pytest.approx(_brute_detection_error(pred, true), abs=1e-12)
        assert detection_error(pred, true, threshold=0.4) == pytest.approx(
            _brute_detection_error(pred, true, 0.4), abs=1e-12
        )
        # Independent check via sklearn's ROC curve: min of 0.5 * (FNR + FPR) over its operating points.
        fpr, tpr, _ = roc_curve(true >= 0.7, pred, drop_intermediate=False)
        assert detection_error(pred, true) == pytest.approx(np.min(0.5 * (1 - tpr) + 0.5 * fpr), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_aurc_matches_brute_force(seed):
    for decimals in (1, 2, None):
        pred, true = _random(seed, n=25 + 5 * seed, decimals=decimals)
        assert aurc(pred, true) == pytest.approx(_brute_aurc(pred, true), abs=1e-12)
    # No ties: the plain textbook definition (mean over k of the top-k mean risk).
    pred, true = _random(seed, decimals=None)
    risk = (1 - true)[np.argsort(-pred)]
    assert aurc(pred, true) == pytest.approx(np.mean(np.cumsum(risk) / np.arange(1, len(risk) + 1)))


@pytest.mark.parametrize("seed", range(4))
def test_every_metric_invariant_to_sample_order(seed):
    pred, true = _random(seed, n=50, decimals=1)  # many ties
    ref = quality_metrics(pred, true)
    rng = np.random.default_rng(100 + seed)
    for _ in range(3):
        perm = rng.permutation(len(pred))
        out = quality_metrics(pred[perm], true[perm])
        for k in QUALITY_KEYS:
            assert out[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), k
        cov, risk = risk_coverage_curve(pred[perm], true[perm])
        ref_cov, ref_risk = risk_coverage_curve(pred, true)
        np.testing.assert_allclose(cov, ref_cov, rtol=1e-12)
        np.testing.assert_allclose(risk, ref_risk, rtol=1e-12)


@pytest.mark.parametrize(
    ("pred", "true", "match"),
    [
        ([[0.1, 0.2]], [[0.1, 0.2]], "1-D"),
        ([0.1, 0.2, 0.3], [0.1, 0.2], "length"),
        ([], [], "empty"),
        ([0.1, float("nan")], [0.1, 0.2], "predicted has 1 non-finite"),
        ([0.1, 0.2], [float("inf"), 0.2], "true has 1 non-finite"),
    ],
)
@pytest.mark.parametrize("fn", [quality_metrics, detection_error, aurc, risk_coverage_curve])
def test_bad_input_raises(fn, pred, true, match):
    with pytest.raises(ValueError, match=match):
        fn(pred, true)


def test_non_finite_threshold_raises():
    with pytest.raises(ValueError, match="threshold"):
        quality_metrics(PRED, TRUE, threshold=float("nan"))
