"""Confidence intervals of the quality metrics over test images and seeds, vectorised.

Functional, in the style of torchmetrics' functional API: plain functions on arrays.

**What varies.** A result row has, per seed ``s`` (a full repetition: f, g and RCA trained with that
seed), a predicted and a true Jaccard per test image, arrays ``(S, N)``. Its estimate is the mean
over seeds of the metric on all test images. Two things make it uncertain: which test images were
drawn, and which training runs (seeds). The interval adds the two variances:

- *test images*: the bootstrap variance of the seed mean, ``B`` replicates that each draw ``N``
  test images with replacement (the same images for every seed) and average the metric over the
  seeds;
- *seeds*: ``s^2 / S``, the sample variance of the ``S`` per-seed values over ``S``. A bootstrap
  that also redraws the seeds would shrink this by ``(S - 1) / S`` and, with 2-5 seeds, miss
  the method's mean far more often than 5%; so the interval is ``estimate +- t * se`` with a
  Student t quantile and Welch-Satterthwaite degrees of freedom (``S - 1`` when the seed part
  dominates, normal when the image part does or there is one seed). With one seed the interval is
  for that seed's g, not for the method. It errs wide: the seeds are scored on the same images, so
  ``s^2`` also holds each seed's own noise over those images, which the image part holds already.

Being centred on the estimate, it also avoids the percentile interval's shift for detection error
(a minimum over thresholds, which resampling makes look better than it is).

**Pairing.** :func:`resample_indices` draws the images once; the same draws are applied to every
row, and a paired difference ``a - b`` takes its image part from the replicates subtracted draw by
draw and its seed part from the per-seed differences (the same images and seeds on both sides).
The difference of a row with itself is exactly zero, its interval ``[0, 0]``.

**Metrics.** :func:`quality_metrics_batch` computes every key of
:func:`segqc.metrics.quality_metrics` for a batch of samples at once, exactly as it does (same
tie rules: average ranks for AUROC and Spearman, scikit-learn's average precision with tied scores
entering together, the exact detection error and tie-aware AURC); the tests check it against
``quality_metrics`` (and so against scikit-learn) on data with ties. A replicate in which only one
class (pass / fail) is drawn has NaN for the classification metrics, and a constant input has NaN
Spearman; such seeds are left out of the replicate's seed mean (``nanmean``) and, when every seed
is NaN, the replicate is left out of the variance; ``n_finite`` counts the replicates kept and
``n_seeds`` the seeds with a finite value.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

from segqc.metrics.quality import QUALITY_KEYS

__all__ = [
    "bootstrap_rows",
    "bootstrap_replicates",
    "paired_difference",
    "quality_metrics_batch",
    "resample_indices",
    "seed_image_interval",
]


def resample_indices(n_images: int, *, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Seeded draws of test images with replacement: a ``(B, N)`` integer index array.

    Reuse the same draws for every row that should be compared.
    """
    if n_images < 1 or n_resamples < 1:
        raise ValueError(f"need n_images, n_resamples >= 1, got {n_images}, {n_resamples}")
    return np.random.default_rng(seed).integers(0, n_images, size=(n_resamples, n_images))


def _blocks(sorted_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each position of row-sorted scores, the first and the last position with the same score."""
    m, n = sorted_scores.shape
    change = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    is_end = np.ones((m, n), bool)
    is_end[:, :-1] = change
    is_start = np.ones((m, n), bool)
    is_start[:, 1:] = change
    pos = np.arange(n)
    end = np.minimum.accumulate(np.where(is_end, pos, n)[:, ::-1], axis=1)[:, ::-1]
    start = np.maximum.accumulate(np.where(is_start, pos, -1), axis=1)
    return start, end


def _average_precision(positive: np.ndarray, end: np.ndarray) -> np.ndarray:
    """scikit-learn's average precision per row, ``sum_k (R_k - R_{k-1}) P_k`` over distinct
    thresholds (tied scores enter together), from labels sorted by decreasing score and the last
    position of each position's tied block."""
    pos = positive.astype(np.float64)
    tp = np.cumsum(pos, 1)
    precision_at_end = np.take_along_axis(tp, end, 1) / (end + 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * precision_at_end).sum(1) / pos.sum(1)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def quality_metrics_batch(
    predicted: np.ndarray, true: np.ndarray, threshold: float = 0.7
) -> dict[str, np.ndarray]:
    """Every key of :func:`segqc.metrics.quality_metrics`, for each row of ``(M, N)`` arrays.

    Two sorts per row (of ``predicted`` and of ``true``); every metric is read from them. Within a
    block of tied predicted scores the order does not matter to any metric (ties enter together).

    Returns:
        ``{key: (M,)}`` float64; NaN where a row has one class only (classification metrics) or a
        constant input (Spearman), silently (no warning per row).
    """
    p = np.asarray(predicted, np.float64)
    t = np.asarray(true, np.float64)
    if p.ndim != 2 or p.shape != t.shape or p.shape[1] == 0:
        raise ValueError(
            f"predicted and true must be non-empty (M, N) arrays of one shape, got {p.shape}, {t.shape}"
        )
    m, n = p.shape
    is_pass = t >= threshold
    n_pass = is_pass.sum(1)
    n_fail = n - n_pass
    two_class = (n_pass > 0) & (n_fail > 0)
    out: dict[str, np.ndarray] = {"rmse": np.sqrt(np.mean((p - t) ** 2, 1))}

    order = np.argsort(p, axis=1)  # ascending predicted score
    sp = np.take_along_axis(p, order, 1)
    spass = np.take_along_axis(is_pass, order, 1)
    st = np.take_along_axis(t, order, 1)
    start, end = _blocks(sp)
    with np.errstate(invalid="ignore", divide="ignore"):
        # detection error: a cut at each distinct score, its tied block on the "<= d" side
        pass_le = np.cumsum(spass, 1) / n_pass[:, None]
        fail_gt = 1.0 - np.cumsum(~spass, 1) / n_fail[:, None]
        err = np.where(end == np.arange(n), 0.5 * pass_le + 0.5 * fail_gt, np.inf)
        out["detection_error"] = np.where(two_class, np.minimum(0.5, err.min(1)), np.nan)
        # AUROC from average ranks (Mann-Whitney U), equal to sklearn's roc_auc_score with ties
        rank_p = (start + end) / 2.0 + 1.0
        u = (rank_p * spass).sum(1) - n_pass * (n_pass + 1) / 2.0
        out["auroc"] = np.where(two_class, u / (n_pass * n_fail), np.nan)
    # decreasing score: the ascending arrays reversed; block ends mirror block starts
    rev_end = (n - 1 - start)[:, ::-1]
    out["aupr_pass"] = np.where(two_class, _average_precision(spass[:, ::-1], rev_end), np.nan)
    out["aupr_fail"] = np.where(two_class, _average_precision(~spass, end), np.nan)  # score -p
    # AURC: accept from the highest score down, tied blocks together
    risk = 1.0 - st[:, ::-1]
    out["aurc"] = (np.take_along_axis(np.cumsum(risk, 1), rev_end, 1) / (rev_end + 1.0)).mean(1)
    # Spearman: Pearson of average ranks, both in the order sorted by predicted
    order_t = np.argsort(st, axis=1)
    t_start, t_end = _blocks(np.take_along_axis(st, order_t, 1))
    rank_t = np.empty_like(rank_p)
    np.put_along_axis(rank_t, order_t, (t_start + t_end) / 2.0 + 1.0, 1)
    out["spearman"] = _pearson_rows(rank_p, rank_t)
    return {k: out[k] for k in QUALITY_KEYS}


def _seed_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite values; NaN where none is finite."""
    finite = np.isfinite(values)
    count = finite.sum(-1)
    total = np.where(finite, values, 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def bootstrap_replicates(
    predicted: np.ndarray,
    true: np.ndarray,
    images: np.ndarray,
    *,
    threshold: float = 0.7,
    chunk: int = 500,
    per_seed: bool = False,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of every metric of one row: ``{key: (B,)}`` (``(B, S)`` with ``per_seed``).

    Args:
        predicted, true: ``(S, N)`` per seed and test image (or ``(N,)`` for one seed).
        images: draws from :func:`resample_indices`, ``(B, N)``.
        threshold: pass / fail threshold of the true Jaccard.
        chunk: replicates computed at once (memory).
        per_seed: keep each seed's value instead of their mean.
    Returns:
        Per key, the mean over the seeds of the metric on the drawn images (NaN seeds left out;
        NaN if every seed is NaN), or with ``per_seed`` every seed's value.
    """
    p = np.atleast_2d(np.asarray(predicted, np.float64))
    t = np.atleast_2d(np.asarray(true, np.float64))
    n_seeds = p.shape[0]
    if images.ndim != 2 or images.shape[1] != p.shape[1]:
        raise ValueError(f"draws {images.shape} do not fit data of shape {p.shape}")
    out = {k: np.empty((len(images), n_seeds)) for k in QUALITY_KEYS}
    for start in range(0, len(images), chunk):
        idx = images[start : start + chunk]  # (b, N)
        b = len(idx)
        # every seed on the drawn images: (b * S, N)
        pp = p[:, idx].transpose(1, 0, 2).reshape(b * n_seeds, -1)
        tt = t[:, idx].transpose(1, 0, 2).reshape(b * n_seeds, -1)
        for k, v in quality_metrics_batch(pp, tt, threshold).items():
            out[k][start : start + b] = v.reshape(b, n_seeds)
    return out if per_seed else {k: _seed_mean(v) for k, v in out.items()}


def seed_image_interval(
    estimate: float,
    image_replicates: np.ndarray,
    seed_values: np.ndarray,
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-np.inf, np.inf),
) -> dict[str, Any]:
    """``estimate +- t * se`` with ``se^2`` = the variance of the finite ``image_replicates`` (test
    images) + ``var(seed_values) / S`` (seeds, sample variance over the ``S`` finite per-seed values)
    and Welch-Satterthwaite degrees of freedom ``se^4 (S - 1) / (var / S)^2`` (the image part counts
    as infinitely many). Clipped to ``bounds``, the metric's possible range.

    Returns:
        ``{"estimate", "low", "high", "se", "df", "n_finite", "n_seeds"}`` (``df`` None: normal);
        low and high NaN when the estimate or every replicate is NaN.
    """
    reps = np.asarray(image_replicates, np.float64)
    reps = reps[np.isfinite(reps)]
    values = np.asarray(seed_values, np.float64)
    values = values[np.isfinite(values)]
    n_seeds = int(values.size)
    out: dict[str, Any] = {
        "estimate": float(estimate),
        "low": float("nan"),
        "high": float("nan"),
        "se": float("nan"),
        "df": None,
        "n_finite": int(reps.size),
        "n_seeds": n_seeds,
    }
    if not np.isfinite(estimate) or reps.size < 2:
        return out
    image_var = float(reps.var(ddof=1))
    seed_var = float(values.var(ddof=1)) / n_seeds if n_seeds > 1 else 0.0
    total = image_var + seed_var
    df = total**2 * (n_seeds - 1) / seed_var**2 if seed_var > 0 else math.inf
    quantile = (
        float(student_t.ppf(0.5 + confidence / 2.0, df))
        if math.isfinite(df)
        else float(norm.ppf(0.5 + confidence / 2.0))
    )
    half = quantile * math.sqrt(total)
    out.update(
        low=float(max(bounds[0], estimate - half)),
        high=float(min(bounds[1], estimate + half)),
        se=math.sqrt(total),
        df=float(df) if math.isfinite(df) else None,
    )
    return out


def paired_difference(
    replicates_a: dict[str, np.ndarray], replicates_b: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Draw-by-draw (or seed-by-seed) difference ``a - b`` of two rows' values."""
    return {k: replicates_a[k] - replicates_b[k] for k in replicates_a}


def _bounds(key: str, difference: bool) -> tuple[float, float]:
    """The possible range of a metric (Spearman in [-1, 1], the others in [0, 1]) or of a difference."""
    low, high = (-1.0, 1.0) if key == "spearman" else (0.0, 1.0)
    return (low - high, high - low) if difference else (low, high)


def bootstrap_rows(
    rows: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    threshold: float = 0.7,
    baseline: str | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Intervals for every row and metric, and paired differences to ``baseline``
    (:func:`seed_image_interval`, the image part from shared draws of :func:`resample_indices`).

    Args:
        rows: per row name, ``(predicted, true)`` arrays ``(S, N)``; every row must have the same
            ``S`` seeds and ``N`` test images in the same order.
        threshold: pass / fail threshold of the true Jaccard.
        baseline: the row every other row is compared with (paired), or None.
        n_resamples, seed: bootstrap replicates and the seed of the draws.
        confidence: of the intervals.
    Returns:
        A JSON-able dict: ``{"method", "n_resamples", "seed", "confidence", "n_seeds", "n_images",
        "baseline", "rows": {name: {key: {"estimate", "low", "high", "se", "df", "n_finite",
        "n_seeds"}}}, "difference": {name: {key: {..., "excludes_zero"}}}}``; ``estimate`` is the
        mean over seeds of the metric on all images (NaN seeds left out).
    """
    arrays = {
        name: (np.atleast_2d(np.asarray(p, np.float64)), np.atleast_2d(np.asarray(t, np.float64)))
        for name, (p, t) in rows.items()
    }
    shapes = {a[0].shape for a in arrays.values()} | {a[1].shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"every row needs the same (seeds, images) shape, got {sorted(shapes)}")
    if baseline is not None and baseline not in arrays:
        raise ValueError(f"baseline {baseline!r} is not one of the rows {list(arrays)}")
    ((n_seeds, n_images),) = shapes
    images = resample_indices(n_images, n_resamples=n_resamples, seed=seed)
    replicates, per_seed = {}, {}
    for name, (p, t) in arrays.items():
        replicates[name] = bootstrap_replicates(p, t, images, threshold=threshold, per_seed=True)
        per_seed[name] = quality_metrics_batch(p, t, threshold)  # {key: (S,)} on all images

    def summary(
        values: dict[str, np.ndarray], reps: dict[str, np.ndarray], difference: bool
    ) -> dict[str, dict[str, Any]]:
        """Per key: ``values`` ``(S,)`` on all images and ``reps`` ``(B, S)``, averaged over the same
        finite seeds in both (for a difference, the seeds where both rows are finite)."""
        return {
            k: seed_image_interval(
                float(_seed_mean(values[k])),
                _seed_mean(reps[k]),
                values[k],
                confidence,
                _bounds(k, difference),
            )
            for k in QUALITY_KEYS
        }

    result: dict[str, Any] = {
        "method": "estimate +- t * se; se^2 = bootstrap variance over test images (the same draws for "
        "every row and seed) + seed-to-seed variance / seeds; t with Welch-Satterthwaite degrees of freedom",
        "n_resamples": n_resamples,
        "seed": seed,
        "confidence": confidence,
        "n_seeds": n_seeds,
        "n_images": n_images,
        "baseline": baseline,
        "rows": {name: summary(per_seed[name], replicates[name], False) for name in arrays},
        "difference": {},
    }
    if baseline is not None:
        for name in arrays:
            if name == baseline:
                continue
            diffs = paired_difference(per_seed[name], per_seed[baseline])
            entry = summary(diffs, paired_difference(replicates[name], replicates[baseline]), True)
            for v in entry.values():
                v["excludes_zero"] = bool(v["low"] > 0 or v["high"] < 0)  # False for NaN
            result["difference"][name] = entry
    return result
