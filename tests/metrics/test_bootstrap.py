"""Bootstrap intervals of the quality metrics: exact batch metrics, coverage, pairing, NaN handling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from segqc.metrics import QUALITY_KEYS, quality_metrics
from segqc.metrics.bootstrap import (
    bootstrap_replicates,
    bootstrap_rows,
    quality_metrics_batch,
    resample_indices,
)


def noisy(rng: np.random.Generator, shape: tuple[int, ...], digits: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true Jaccard with many ties (rounded)."""
    p = np.round(rng.random(shape), digits)
    t = np.round(np.clip(p + rng.normal(0, 0.3, shape), 0, 1), 2)
    return p, t


def test_batch_metrics_equal_quality_metrics_with_ties():
    rng = np.random.default_rng(0)
    p, t = noisy(rng, (60, 30))
    p[0] = 0.5  # constant prediction: spearman NaN
    t[1] = 0.9  # one class: classification metrics NaN
    batch = quality_metrics_batch(p, t)
    assert list(batch) == list(QUALITY_KEYS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(len(p)):
            ref = quality_metrics(p[i], t[i])
            for k in QUALITY_KEYS:
                np.testing.assert_allclose(batch[k][i], ref[k], rtol=0, atol=1e-12, err_msg=f"{k} row {i}")
    assert np.isnan(batch["spearman"][0]) and np.isnan(batch["auroc"][1]) and np.isfinite(batch["rmse"][1])


def test_interval_covers_a_known_mean_and_shrinks_with_n():
    # RMSE of predicted = true + e with e ~ N(0, 0.1): the interval should cover 0.1 in about 95% of
    # experiments (one seed: the image part only)
    covered, widths = 0, {}
    trials = 60
    for trial in range(trials):
        rng = np.random.default_rng(100 + trial)
        t = rng.random(200)
        p = t + rng.normal(0, 0.1, 200)
        rmse = bootstrap_rows({"a": (p, t)}, n_resamples=400, seed=trial)["rows"]["a"]["rmse"]
        covered += rmse["low"] <= 0.1 <= rmse["high"]
        assert rmse["df"] is None and rmse["n_seeds"] == 1  # normal quantile
    assert covered / trials >= 0.85, covered
    for n in (100, 1600):
        rng = np.random.default_rng(7)
        t = rng.random(n)
        p = t + rng.normal(0, 0.1, n)
        rmse = bootstrap_rows({"a": (p, t)}, n_resamples=400)["rows"]["a"]["rmse"]
        widths[n] = rmse["high"] - rmse["low"]
    # width ~ 1 / sqrt(n): 16 times the images, about a quarter of the width
    assert 0.15 < widths[1600] / widths[100] < 0.4, widths


def test_replicates_average_the_metric_over_seeds_on_the_drawn_images():
    rng = np.random.default_rng(4)
    p, t = noisy(rng, (3, 50), digits=2)
    images = resample_indices(50, n_resamples=7, seed=1)
    reps = bootstrap_replicates(p, t, images)
    for b in range(7):
        idx = images[b]
        expected = np.mean([quality_metrics(p[s, idx], t[s, idx])["rmse"] for s in range(3)])
        assert reps["rmse"][b] == pytest.approx(expected, abs=1e-12)


def test_seeds_widen_the_interval():
    rng = np.random.default_rng(3)
    t = rng.random((2, 300))
    p = t + rng.normal(0, 0.1, (2, 300))
    p[1] += 0.2  # seed 1 is much worse: the seed spread must show in the interval
    one = bootstrap_rows({"a": (p[:1], t[:1])}, n_resamples=500)["rows"]["a"]["rmse"]
    two = bootstrap_rows({"a": (p, t)}, n_resamples=500)["rows"]["a"]["rmse"]
    assert two["high"] - two["low"] > 3 * (one["high"] - one["low"])
    assert two["df"] is not None and 1.0 <= two["df"] < 1.5  # the seed part dominates: t with ~S-1 df


def test_few_seeds_cover_the_methods_mean_when_seeds_vary_most():
    # Each seed's g has its own bias b_s ~ N(0.08, 0.03) on top of image noise, so the seeds vary
    # more than the images do; the method's mean RMSE, E sqrt(b^2 + sigma^2), is what an interval over
    # 3 seeds should cover. Redrawing the 3 seeds with replacement (percentile interval) covers it in
    # about 70% of these experiments (benchmarks/interval_coverage.py); the t interval in about 90%.
    n, sigma, trials = 150, 0.05, 120
    b = np.random.default_rng(11).normal(0.08, 0.03, 400_000)
    truth = np.mean(np.sqrt(b**2 + sigma**2))
    covered = 0
    for trial in range(trials):
        r = np.random.default_rng(1000 + trial)
        t = np.tile(r.random(n), (3, 1))
        p = t + r.normal(0.08, 0.03, (3, 1)) + r.normal(0, sigma, (3, n))
        rmse = bootstrap_rows({"a": (p, t)}, n_resamples=200, seed=trial)["rows"]["a"]["rmse"]
        covered += rmse["low"] <= truth <= rmse["high"]
    assert covered / trials >= 0.85, covered / trials


def test_paired_difference_of_identical_rows_is_exactly_zero():
    rng = np.random.default_rng(1)
    p, t = noisy(rng, (2, 120), digits=2)
    res = bootstrap_rows({"base": (p, t), "same": (p.copy(), t.copy())}, baseline="base", n_resamples=300)
    for k in QUALITY_KEYS:
        d = res["difference"]["same"][k]
        assert d["estimate"] == 0.0 and d["low"] == 0.0 and d["high"] == 0.0, (k, d)
        assert d["excludes_zero"] is False
        assert d["se"] == 0.0
    assert "base" not in res["difference"]


def test_clear_difference_excludes_zero_and_draws_are_shared():
    rng = np.random.default_rng(2)
    t = rng.random((1, 400))
    good = t + rng.normal(0, 0.05, t.shape)
    bad = t + rng.normal(0, 0.3, t.shape)
    res = bootstrap_rows({"base": (bad, t), "good": (good, t)}, baseline="base", n_resamples=300, seed=5)
    d = res["difference"]["good"]["rmse"]
    assert d["excludes_zero"] and d["high"] < 0
    again = bootstrap_rows({"base": (bad, t), "good": (good, t)}, baseline="base", n_resamples=300, seed=5)
    assert again == res  # seeded


def test_one_class_replicates_are_counted_not_dropped_silently():
    t = np.array([[0.9] * 19 + [0.1]])  # one failure: many replicates draw no failure
    p = np.linspace(0, 1, 20)[None]
    res = bootstrap_rows({"a": (p, t)}, n_resamples=400)["rows"]["a"]
    assert 0 < res["auroc"]["n_finite"] < 400 and res["rmse"]["n_finite"] == 400
    assert 0.0 <= res["auroc"]["low"] <= res["auroc"]["high"] <= 1.0  # clipped to the metric's range


def test_a_seed_with_a_nan_metric_is_counted():
    t = np.tile(np.linspace(0.1, 0.95, 40), (3, 1))
    p = t.copy()
    p[2] = 0.5  # seed 2's g is constant: its Spearman is NaN
    res = bootstrap_rows({"a": (p, t)}, n_resamples=100)["rows"]["a"]
    assert res["spearman"]["n_seeds"] == 2 and res["rmse"]["n_seeds"] == 3


def test_rows_must_share_shape():
    with pytest.raises(ValueError, match="same"):
        bootstrap_rows({"a": (np.zeros((1, 5)), np.zeros((1, 5))), "b": (np.zeros((2, 5)), np.zeros((2, 5)))})


def test_a_difference_uses_the_seeds_where_both_rows_are_defined_in_every_part():
    rng = np.random.default_rng(8)
    t = np.tile(rng.random(80), (3, 1))
    a, b = t + rng.normal(0, 0.1, t.shape), t + rng.normal(0, 0.2, t.shape)
    a[2] = 0.5  # seed 2 of row a is constant: its Spearman is undefined, the other metrics are not
    full = bootstrap_rows({"a": (a, t), "b": (b, t)}, baseline="b", n_resamples=200)
    two = bootstrap_rows({"a": (a[:2], t[:2]), "b": (b[:2], t[:2])}, baseline="b", n_resamples=200)
    assert full["difference"]["a"]["spearman"] == two["difference"]["a"]["spearman"]
    assert full["difference"]["a"]["rmse"]["n_seeds"] == 3
