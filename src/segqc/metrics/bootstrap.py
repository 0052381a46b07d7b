"""Bootstrap confidence intervals of the quality metrics, over test images and seeds, vectorised.

Functional, in the style of torchmetrics' functional API: plain functions on arrays.

**What is resampled.** A result row has, per seed ``s`` (a full repetition: f, g and RCA trained
with that seed), a predicted and a true Jaccard per test image, arrays ``(S, N)``. One bootstrap
replicate draws ``N`` test images with replacement *and* ``S`` seeds with replacement (a two-level,
"hierarchical" bootstrap), computes the metric of each drawn seed on the drawn images and averages
over the drawn seeds. The spread of the replicates therefore covers both the choice of test images
and the seed-to-seed spread; with one seed it is the plain bootstrap over test images. The
interval is the percentile interval of the replicates.

**Pairing.** :func:`resample_indices` draws the image and seed indices once; the same draws are
applied to every row, so rows are comparable, and :func:`paired_difference` subtracts two rows'
replicates draw by draw (the same images and seeds on both sides). The difference of a row with
itself is exactly zero in every replicate.

**Metrics.** :func:`quality_metrics_batch` computes every key of
:func:`segqc.metrics.quality_metrics` for a batch of samples at once, exactly as it does (same
tie rules: average ranks for AUROC and Spearman, scikit-learn's average precision with tied scores
entering together, the exact detection error and tie-aware AURC); the tests check it against
``quality_metrics`` (and so against scikit-learn) on data with ties. A replicate in which only one
class (pass / fail) is drawn has NaN for the classification metrics, and a constant input has NaN
Spearman; such replicates are left out of the seed average (``nanmean``) and, when every drawn
seed is NaN, of the interval, which reports how many replicates were finite.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segqc.metrics.quality import QUALITY_KEYS

__all__ = [
    "bootstrap_rows",
    "bootstrap_replicates",
    "paired_difference",
    "percentile_interval",
    "quality_metrics_batch",
    "resample_indices",
]


def resample_indices(
    n_images: int, n_seeds: int = 1, *, n_resamples: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded draws with replacement: ``(images (B, N), seeds (B, S))`` integer index arrays.

    Reuse the same draws for every row that should be compared.
    """
    if n_images < 1 or n_seeds < 1 or n_resamples < 1:
        raise ValueError(
            f"need n_images, n_seeds, n_resamples >= 1, got {n_images}, {n_seeds}, {n_resamples}"
        )
    rng = np.random.default_rng(seed)
    images = rng.integers(0, n_images, size=(n_resamples, n_images))
    seeds = (
        rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
        if n_seeds > 1
        else np.zeros((n_resamples, 1), int)
    )
    return images, seeds


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


def bootstrap_replicates(
    predicted: np.ndarray,
    true: np.ndarray,
    images: np.ndarray,
    seeds: np.ndarray,
    *,
    threshold: float = 0.7,
    chunk: int = 500,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of every metric of one row: ``{key: (B,)}``.

    Args:
        predicted, true: ``(S, N)`` per seed and test image (or ``(N,)`` for one seed).
        images, seeds: draws from :func:`resample_indices` (``(B, N)`` and ``(B, S)``).
        threshold: pass / fail threshold of the true Jaccard.
        chunk: replicates computed at once (memory).
    Returns:
        Per key, the mean over the drawn seeds of the metric on the drawn images (NaN seeds left
        out; NaN if all drawn seeds are NaN).
    """
    p = np.atleast_2d(np.asarray(predicted, np.float64))
    t = np.atleast_2d(np.asarray(true, np.float64))
    n_seeds = p.shape[0]
    if seeds.shape[1] != n_seeds or images.shape[1] != p.shape[1]:
        raise ValueError(f"draws {images.shape}, {seeds.shape} do not fit data of shape {p.shape}")
    out = {k: np.empty(len(images)) for k in QUALITY_KEYS}
    for start in range(0, len(images), chunk):
        idx = images[start : start + chunk]  # (b, N)
        b = len(idx)
        # every seed on the drawn images: (b * S, N)
        pp = p[:, idx].transpose(1, 0, 2).reshape(b * n_seeds, -1)
        tt = t[:, idx].transpose(1, 0, 2).reshape(b * n_seeds, -1)
        per_seed = quality_metrics_batch(pp, tt, threshold)
        for k, v in per_seed.items():
            drawn = np.take_along_axis(v.reshape(b, n_seeds), seeds[start : start + b], 1)
            finite = np.isfinite(drawn)
            total = np.where(finite, drawn, 0.0).sum(1)
            count = finite.sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[k][start : start + b] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float, int]:
    """``(low, high, n_finite)``: the percentile interval of the finite replicates (NaN if none)."""
    r = np.asarray(replicates, np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan"), float("nan"), 0
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(r, [alpha, 1.0 - alpha])
    return float(low), float(high), int(r.size)


def paired_difference(
    replicates_a: dict[str, np.ndarray], replicates_b: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Draw-by-draw difference ``a - b`` of two rows' replicates made with the same draws."""
    return {k: replicates_a[k] - replicates_b[k] for k in replicates_a}


def bootstrap_rows(
    rows: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    threshold: float = 0.7,
    baseline: str | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Intervals for every row and metric, and paired differences to ``baseline``.

    Args:
        rows: per row name, ``(predicted, true)`` arrays ``(S, N)``; every row must have the same
            ``S`` seeds and ``N`` test images in the same order (they are drawn together).
        threshold: pass / fail threshold of the true Jaccard.
        baseline: the row every other row is compared with (paired), or None.
        n_resamples, seed: bootstrap replicates and the seed of the draws.
        confidence: of the percentile intervals.
    Returns:
        A JSON-able dict: ``{"method", "n_resamples", "seed", "confidence", "n_seeds", "n_images",
        "baseline", "rows": {name: {key: {"estimate", "low", "high", "n_finite"}}},
        "difference": {name: {key: {"estimate", "low", "high", "n_finite", "excludes_zero"}}}}``;
        ``estimate`` is the mean over seeds of the metric on all images (NaN seeds left out).
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
    images, seeds = resample_indices(n_images, n_seeds, n_resamples=n_resamples, seed=seed)
    replicates, estimates = {}, {}
    for name, (p, t) in arrays.items():
        replicates[name] = bootstrap_replicates(p, t, images, seeds, threshold=threshold)
        full = quality_metrics_batch(p, t, threshold)
        estimates[name] = {
            k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in full.items()
        }

    def summary(est: dict[str, float], reps: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
        out = {}
        for k in QUALITY_KEYS:
            low, high, n = percentile_interval(reps[k], confidence)
            out[k] = {"estimate": est[k], "low": low, "high": high, "n_finite": n}
        return out

    result: dict[str, Any] = {
        "method": "two-level percentile bootstrap: test images and seeds drawn with replacement, "
        "the same draws for every row",
        "n_resamples": n_resamples,
        "seed": seed,
        "confidence": confidence,
        "n_seeds": n_seeds,
        "n_images": n_images,
        "baseline": baseline,
        "rows": {name: summary(estimates[name], replicates[name]) for name in arrays},
        "difference": {},
    }
    if baseline is not None:
        for name in arrays:
            if name == baseline:
                continue
            diff = paired_difference(replicates[name], replicates[baseline])
            est = {k: estimates[name][k] - estimates[baseline][k] for k in QUALITY_KEYS}
            entry = summary(est, diff)
            for v in entry.values():
                v["excludes_zero"] = bool(v["n_finite"] > 0 and (v["low"] > 0 or v["high"] < 0))
            result["difference"][name] = entry
    return result
