"""Referral thresholds: the rule that turns a predicted Jaccard into pass or refer."""

from __future__ import annotations

import math
import warnings

import numpy as np

from segqc.data.dataset import SegData
from segqc.errors import SegQCError, SegQCWarning

#: Share of the training images held out to choose the threshold for a target failure recall.
CALIBRATION_FRACTION = 0.2


def threshold_above(score: float) -> float:
    """The 4-decimal threshold just above ``score`` (so an image scored ``score`` is referred), at most 1."""
    return min(round((math.floor(score * 10_000) + 1) / 10_000, 4), 1.0)


def choose_threshold(
    predicted: np.ndarray, true: np.ndarray, target_recall: float, failure_jaccard: float
) -> dict:
    """The smallest threshold that refers at least ``target_recall`` of the real failures.

    An image is a failure when its true Jaccard is below ``failure_jaccard``; it is referred when its
    predicted Jaccard is below the threshold. The threshold is rounded up to 4 decimals, just above
    the predicted Jaccard of the k-th lowest-scored failure (k = ceil(target_recall * failures)).

    Args:
        predicted: ``(N,)`` predicted Jaccard of held-out images.
        true: ``(N,)`` their true Jaccard.
        target_recall: wanted fraction of failures referred, in (0, 1].
        failure_jaccard: true Jaccard below which a segmentation is a failure (0.7).

    Returns:
        ``threshold``, ``achieved_recall`` and ``referral_rate`` (fraction of the N images referred),
        plus the counts they come from.

    Raises:
        SegQCError: the held-out images contain no failure.
    """
    predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    failures = np.sort(predicted[true < failure_jaccard])
    if failures.size == 0:
        raise SegQCError(
            f"none of the {len(true)} held-out images is a failure (true Jaccard < {failure_jaccard}), so no "
            "threshold can be chosen for a target failure recall; use more (or harder) training data, or "
            "train without --target-failure-recall to use the fixed threshold"
        )
    k = math.ceil(target_recall * failures.size - 1e-9)
    threshold = threshold_above(failures[k - 1])
    referred = predicted < threshold
    achieved = float((failures < threshold).mean())
    if achieved < target_recall:  # only when a failure was predicted as a perfect 1.0
        warnings.warn(
            f"target failure recall {target_recall} not reachable; got {achieved:.3f}",
            SegQCWarning,
            stacklevel=2,
        )
    return {
        "threshold": threshold,
        "achieved_recall": achieved,
        "referral_rate": float(referred.mean()),
        "n_heldout": int(len(true)),
        "n_heldout_failures": int(failures.size),
        "n_referred": int(referred.sum()),
    }


def hold_out(train: SegData, seed: int) -> tuple[SegData, SegData]:
    """Split a seeded ``CALIBRATION_FRACTION`` of ``train`` off to choose the threshold on.

    Returns:
        ``(rest, held_out)``, each in the original order.

    Raises:
        SegQCError: fewer than 2 images would be left to train on.
    """
    n_cal = max(1, round(CALIBRATION_FRACTION * len(train)))
    if len(train) - n_cal < 2:
        raise SegQCError(f"{len(train)} training images are too few to hold out {n_cal} for the threshold")
    order = np.random.default_rng(seed).permutation(len(train))
    return train.subset(np.sort(order[n_cal:])), train.subset(np.sort(order[:n_cal]))


def threshold_rule(chosen: dict, target_recall: float) -> dict:
    """The record of a threshold chosen by :func:`choose_threshold` or :func:`guaranteed_threshold`
    (``bundle.json``'s ``threshold_rule``)."""
    base = (
        f"smallest threshold referring >= {target_recall:g} of the failures of {chosen['n_heldout']} "
        f"held-out training images"
    )
    if "confidence" in chosen:
        description = (
            f"{base} with probability >= {chosen['confidence']:g} (order-statistic Clopper-Pearson bound "
            f"on {chosen['n_heldout_failures']} held-out failures: recall >= "
            f"{chosen['recall_lower_bound']:.3f} at that confidence; referring {chosen['referral_rate']:.1%} "
            "of the held-out images)"
        )
    else:
        achieved, rate = chosen["achieved_recall"], chosen["referral_rate"]
        description = f"{base} (achieved {achieved:.3f}, referring {rate:.1%} of them)"
    return {
        "kind": "guaranteed_failure_recall" if "confidence" in chosen else "target_failure_recall",
        "target_recall": target_recall,
        "calibration_fraction": CALIBRATION_FRACTION,
        **chosen,
        "description": description,
    }


def guaranteed_threshold(
    predicted: np.ndarray, true: np.ndarray, target_recall: float, confidence: float, failure_jaccard: float
) -> dict:
    """The smallest threshold whose failure recall is at least ``target_recall`` with probability at
    least ``confidence`` over the draw of the calibration images.

    With m calibration failures whose predicted Jaccards sort to s_(1) <= ... <= s_(m), a threshold just
    above s_(k) refers a new failure with probability F(s_(k)), F the distribution of failures' scores;
    for exchangeable images F(s_(k)) ~ Beta(k, m - k + 1) (ties only raise it). So k is the smallest
    order with P(Beta(k, m - k + 1) >= R) >= C: the exact one-sided binomial (Clopper-Pearson) bound
    of an order statistic, free of any assumption on g.

    Returns:
        ``threshold``, ``recall_lower_bound`` (the recall this threshold has at ``confidence``, >= R),
        ``achieved_recall`` and ``referral_rate`` on the calibration images, and the counts.

    Raises:
        SegQCError: too few calibration failures for the guarantee (the message says how many it needs).
    """
    from scipy.stats import beta

    if not 0.0 < confidence < 1.0:
        raise SegQCError(f"confidence must be in (0, 1), got {confidence}")
    predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    failures = np.sort(predicted[true < failure_jaccard])
    m = failures.size
    if not 0.0 < target_recall < 1.0:
        raise SegQCError(f"a guaranteed failure recall must be in (0, 1), got {target_recall}")
    needed = math.ceil(math.log(1.0 - confidence) / math.log(target_recall))
    orders = np.arange(1, m + 1)
    ok = beta.sf(target_recall, orders, m - orders + 1) >= confidence if m else np.zeros(0, bool)
    if not ok.any():
        raise SegQCError(
            f"the {len(true)} held-out images hold {m} failures (true Jaccard < {failure_jaccard}); a "
            f"failure recall of {target_recall:g} at confidence {confidence:g} needs at least {needed} "
            "(use more training data, or a lower --target-failure-recall or --confidence)"
        )
    k = int(orders[ok][0])
    threshold = threshold_above(failures[k - 1])
    referred = predicted < threshold
    return {
        "threshold": threshold,
        "recall_lower_bound": float(beta.ppf(1.0 - confidence, k, m - k + 1)),
        "confidence": confidence,
        "order": k,
        "achieved_recall": float((failures < threshold).mean()),
        "referral_rate": float(referred.mean()),
        "n_heldout": int(len(true)),
        "n_heldout_failures": int(m),
        "min_failures_needed": needed,
        "n_referred": int(referred.sum()),
    }


def check_recall_target(target_failure_recall: float | None, confidence: float | None) -> None:
    """Refuse a target failure recall outside (0, 1], or a confidence without one."""
    if target_failure_recall is not None and not 0.0 < target_failure_recall <= 1.0:
        raise SegQCError(f"target failure recall must be in (0, 1], got {target_failure_recall}")
    if confidence is not None and target_failure_recall is None:
        raise SegQCError("a confidence needs a target failure recall (--target-failure-recall)")


def referral_threshold(
    predicted: np.ndarray,
    true: np.ndarray,
    failure_jaccard: float,
    target_failure_recall: float | None = None,
    confidence: float | None = None,
) -> tuple[float, dict | None]:
    """The referral threshold and its ``threshold_rule`` record, from g's ``predicted`` Jaccard of
    held-out images and their ``true`` one: ``failure_jaccard`` itself (rule None) without a target,
    else :func:`choose_threshold`, or :func:`guaranteed_threshold` with a ``confidence``; a
    ``SegQCError`` when that is below :data:`segqc.model.MIN_THRESHOLD` (no model with it loads)."""
    check_recall_target(target_failure_recall, confidence)
    if target_failure_recall is None:
        return failure_jaccard, None
    if confidence is None:
        chosen = choose_threshold(predicted, true, target_failure_recall, failure_jaccard)
    else:
        chosen = guaranteed_threshold(predicted, true, target_failure_recall, confidence, failure_jaccard)
    from segqc.model import MIN_THRESHOLD  # no model loads a threshold below it: not a gate

    if chosen["threshold"] < MIN_THRESHOLD:
        raise SegQCError(
            f"the threshold this target gives, {chosen['threshold']:g}, is below {MIN_THRESHOLD:g}: it would "
            "refer (almost) nothing, and no model with it loads; ask a higher target failure recall"
        )
    return chosen["threshold"], threshold_rule(chosen, target_failure_recall)
