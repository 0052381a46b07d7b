"""How well predicted per-image quality (Jaccard) matches the true per-image Jaccard.

Every function here takes ``predicted`` first and ``true`` (the ground-truth Jaccard) second, the order of
the project's ``quality_metrics(predicted, true)``; this is the reverse of scikit-learn's
``(y_true, y_score)``. Both are 1-D arrays of the same length ``(N,)``.

An image *passes* when its true Jaccard is ``>= threshold`` (default 0.7) and *fails* otherwise; the
classification metrics treat a pass as the positive class and ``predicted`` as its score. Following
DeVries & Taylor (2018), "Leveraging uncertainty estimates for predicting segmentation quality".
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "HIGHER_IS_BETTER",
    "QUALITY_KEYS",
    "aurc",
    "detection_error",
    "quality_metrics",
    "risk_coverage_curve",
]

HIGHER_IS_BETTER: dict[str, bool] = {
    "rmse": False,
    "detection_error": False,
    "auroc": True,
    "aupr_pass": True,
    "aupr_fail": True,
    "aurc": False,
    "spearman": True,
}
QUALITY_KEYS: tuple[str, ...] = tuple(HIGHER_IS_BETTER)


def _validate(predicted: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.ndim != 1 or t.ndim != 1:
        raise ValueError(f"predicted and true must be 1-D; got shapes {p.shape} and {t.shape}")
    if p.shape != t.shape:
        raise ValueError(f"predicted and true differ in length: {p.shape[0]} vs {t.shape[0]}")
    if p.size == 0:
        raise ValueError("predicted and true are empty; need at least one image")
    for name, a in (("predicted", p), ("true", t)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} has {int(np.sum(~np.isfinite(a)))} non-finite value(s) (NaN or inf)")
    return p, t


def _pass_mask(true: np.ndarray, threshold: float) -> np.ndarray:
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite; got {threshold!r}")
    return true >= threshold


def _one_class_reason(is_pass: np.ndarray, threshold: float) -> str | None:
    n_pass = int(is_pass.sum())
    if 0 < n_pass < is_pass.size:
        return None
    which = "pass" if n_pass else "fail"
    return (
        f"all {is_pass.size} images {which} (true Jaccard {'>=' if n_pass else '<'} {threshold}); "
        "detection_error, auroc, aupr_pass and aupr_fail need both classes and are NaN"
    )


def _detection_error(p: np.ndarray, is_pass: np.ndarray) -> float:
    """Exact minimum over cut points; assumes both classes are present."""
    order = np.argsort(p, kind="stable")
    sp, spass = p[order], is_pass[order]
    ends = np.r_[np.flatnonzero(np.diff(sp)), sp.size - 1]  # last index of each block of equal scores
    n_pass = spass.sum()
    n_fail = spass.size - n_pass
    pass_le = np.cumsum(spass)[ends] / n_pass  # P(predicted <= d | pass) with d = each distinct score
    fail_gt = 1.0 - np.cumsum(~spass)[ends] / n_fail  # P(predicted > d | fail)
    # d below every score: 0.5 * 0 + 0.5 * 1.
    return float(min(0.5, np.min(0.5 * pass_le + 0.5 * fail_gt)))


def detection_error(predicted: Any, true: Any, threshold: float = 0.7) -> float:
    """Minimum over thresholds ``d`` of ``0.5 P(predicted <= d | pass) + 0.5 P(predicted > d | fail)``.

    The error of the best cut on ``predicted`` for telling passes (true ``>= threshold``) from failures,
    with both classes weighted equally (DeVries & Taylor, 2018). The minimum is exact: it is taken over
    ``d`` below every score and ``d`` at each distinct predicted value, where all images tied at ``d`` fall
    on the ``<= d`` (flagged as failed) side. 0 is a perfect split, 0.5 is chance. O(N log N).

    Args:
        predicted: Predicted Jaccard (any quality score, higher = better), shape ``(N,)``.
        true: True Jaccard, shape ``(N,)``.
        threshold: True Jaccard at or above which an image passes.

    Returns:
        The detection error in ``[0, 0.5]``, or NaN (with a ``UserWarning``) if only one class is present.

    Raises:
        ValueError: If the inputs are not 1-D, differ in length, are empty or not finite.

    Examples:
        >>> detection_error([0.9, 0.8, 0.6, 0.5], [0.9, 0.6, 0.8, 0.1])
        0.25
    """
    p, t = _validate(predicted, true)
    is_pass = _pass_mask(t, threshold)
    reason = _one_class_reason(is_pass, threshold)
    if reason is not None:
        warnings.warn(reason, UserWarning, stacklevel=2)
        return float("nan")
    return _detection_error(p, is_pass)


def risk_coverage_curve(predicted: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve of selecting images by ``predicted``, with risk ``1 - true`` Jaccard.

    Images are accepted from the most confident (highest ``predicted``) down. Tie rule: images with equal
    ``predicted`` are accepted together, so the curve has one point per distinct predicted value and does
    not depend on the order of the samples.

    Args:
        predicted: Predicted Jaccard, shape ``(N,)``.
        true: True Jaccard, shape ``(N,)``.

    Returns:
        ``(coverage, risk)``, float64 arrays of shape ``(B,)`` for ``B`` distinct predicted values, in order
        of decreasing threshold: ``coverage[b]`` is the fraction of images with ``predicted >= `` the b-th
        largest value (the last is 1.0), ``risk[b]`` the mean ``1 - true`` over those images.

    Raises:
        ValueError: If the inputs are not 1-D, differ in length, are empty or not finite.

    Examples:
        >>> cov, risk = risk_coverage_curve([0.9, 0.8, 0.8, 0.1], [1.0, 0.5, 0.7, 0.0])
        >>> cov.tolist(), risk.round(4).tolist()
        ([0.25, 0.75, 1.0], [0.0, 0.2667, 0.45])
    """
    p, t = _validate(predicted, true)
    order = np.argsort(-p, kind="stable")
    sp, risk = p[order], 1.0 - t[order]
    ends = np.r_[np.flatnonzero(np.diff(sp)), sp.size - 1]
    k = ends + 1.0
    return k / sp.size, np.cumsum(risk)[ends] / k


def aurc(predicted: Any, true: Any) -> float:
    """Area under the risk-coverage curve (AURC; Geifman et al., 2019, "Bias-reduced uncertainty estimation
    for deep neural classifiers", ICLR), with risk ``1 - true`` Jaccard. Lower is better.

    The standard discrete AURC is the mean over coverage ``k = 1..N`` of the mean risk of the ``k`` images
    with the highest ``predicted``. Tie rule: images with equal ``predicted`` enter together, so for every
    ``k`` inside a tied block the risk of the whole block (its last ``k``) is used; equivalently, each point
    of :func:`risk_coverage_curve` is weighted by the size of its block. This makes the value independent of
    sample order and equal to the usual definition when there are no ties.

    Args:
        predicted: Predicted Jaccard, shape ``(N,)``.
        true: True Jaccard, shape ``(N,)``.

    Returns:
        The AURC, a float.

    Raises:
        ValueError: If the inputs are not 1-D, differ in length, are empty or not finite.

    Examples:
        >>> aurc([0.9, 0.8, 0.6, 0.5], [1.0, 0.5, 0.8, 0.0])  # (0 + .25 + .2333 + .425) / 4
        0.2270833333333333
    """
    coverage, risk = risk_coverage_curve(predicted, true)
    return float(np.sum(np.diff(coverage, prepend=0.0) * risk))


def _spearman(p: np.ndarray, t: np.ndarray) -> float:
    if np.ptp(p) == 0 or np.ptp(t) == 0:
        which = " and ".join(n for n, a in (("predicted", p), ("true", t)) if np.ptp(a) == 0)
        warnings.warn(f"spearman is NaN: {which} is constant", UserWarning, stacklevel=3)
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(p, t)[0])


def quality_metrics(predicted: Any, true: Any, threshold: float = 0.7) -> dict[str, float]:
    """All quality-prediction metrics of DeVries & Taylor (2018), plus AURC and Spearman's rho.

    Args:
        predicted: Predicted per-image Jaccard, shape ``(N,)``.
        true: True per-image Jaccard, shape ``(N,)``.
        threshold: True Jaccard at or above which an image passes (the positive class).

    Returns:
        A dict of plain floats (fractions, not percentages) with keys :data:`QUALITY_KEYS`, in that order:

        - ``rmse``: ``sqrt(mean((predicted - true) ** 2))``.
        - ``detection_error``: see :func:`detection_error`.
        - ``auroc``: ROC AUC with pass positive and ``predicted`` as score.
        - ``aupr_pass``: average precision with pass positive and ``predicted`` as score.
        - ``aupr_fail``: average precision with fail positive and ``-predicted`` as score.
        - ``aurc``: see :func:`aurc`.
        - ``spearman``: Spearman's rank correlation of ``predicted`` and ``true``.

        With only one class present, ``detection_error``, ``auroc``, ``aupr_pass`` and ``aupr_fail`` are NaN
        and one ``UserWarning`` says why; ``spearman`` is NaN (one warning) if either input is constant.
        :data:`HIGHER_IS_BETTER` says which direction is better for each key.

    Raises:
        ValueError: If the inputs are not 1-D, differ in length, are empty or not finite.

    Examples:
        >>> m = quality_metrics([0.9, 0.8, 0.6, 0.5], [0.9, 0.6, 0.8, 0.1])
        >>> m["detection_error"], m["auroc"], round(m["spearman"], 4)
        (0.25, 0.75, 0.8)
    """
    p, t = _validate(predicted, true)
    is_pass = _pass_mask(t, threshold)
    nan = float("nan")
    out = dict.fromkeys(QUALITY_KEYS, nan)
    out["rmse"] = float(np.sqrt(np.mean((p - t) ** 2)))
    reason = _one_class_reason(is_pass, threshold)
    if reason is not None:
        warnings.warn(reason, UserWarning, stacklevel=2)
    else:
        out["detection_error"] = _detection_error(p, is_pass)
        out["auroc"] = float(roc_auc_score(is_pass, p))
        out["aupr_pass"] = float(average_precision_score(is_pass, p))
        out["aupr_fail"] = float(average_precision_score(~is_pass, -p))
    out["aurc"] = aurc(p, t)
    out["spearman"] = _spearman(p, t)
    return out
