"""Referral thresholds: the rule that turns a predicted Jaccard into pass or refer."""

from __future__ import annotations

import math
import warnings

import numpy as np

from segqc.data.dataset import SegData
from segqc.errors import SegQCError

#: Share of the training images held out to choose the threshold for a target failure recall.
CALIBRATION_FRACTION = 0.2


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
    cut = failures[k - 1]
    threshold = (math.floor(cut * 10_000) + 1) / 10_000
    threshold = min(round(threshold, 4), 1.0)
    referred = predicted < threshold
    achieved = float((failures < threshold).mean())
    if achieved < target_recall:  # only when a failure was predicted as a perfect 1.0
        warnings.warn(
            f"target failure recall {target_recall} not reachable; got {achieved:.3f}", stacklevel=2
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
    """The record of a threshold chosen by :func:`choose_threshold` (``bundle.json``'s ``threshold_rule``)."""
    return {
        "kind": "target_failure_recall",
        "target_recall": target_recall,
        "calibration_fraction": CALIBRATION_FRACTION,
        **chosen,
        "description": (
            f"smallest threshold referring >= {target_recall:g} of the failures of "
            f"{chosen['n_heldout']} held-out training images (achieved {chosen['achieved_recall']:.3f}, "
            f"referring {chosen['referral_rate']:.1%} of them)"
        ),
    }
