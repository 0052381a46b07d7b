"""The pass/refer gate: every check an image must pass, learned at training and stored in the manifest.

An image passes only when (1) every number on the way is finite, (2) it looks like the training
images (:mod:`segqc.ood`), and (3) g's predicted Jaccard is at least the threshold. Anything else is
referred, with the reasons. Beside the point prediction, each image gets a split-conformal lower bound
of its true Jaccard (:func:`conformal_margin`).

The gate's record in ``bundle.json`` / ``export.json`` (key ``gate``)::

    {"ood": {...OODDetector...}, "conformal": {"confidence", "margin", "n_heldout", "guaranteed"},
     "fitness": {"fit", "problems", "notes", "n_heldout", "n_heldout_failures", "failure_recall", ...}}

NumPy only: it runs the same on both backends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segqc.ood import DEFAULT_ALPHA, OODDetector, image_features
from segqc.types import QualitySamples

#: Reasons to refer, most severe first. A pass has the reason ``"ok"``.
NOT_FINITE = "not finite"
OUT_OF_DISTRIBUTION = "out-of-distribution"
LOW_QUALITY = "low predicted quality"
REASONS = (NOT_FINITE, OUT_OF_DISTRIBUTION, LOW_QUALITY)
PASS_REASON = "ok"
#: Default confidence of the per-image lower bound.
DEFAULT_BOUND_CONFIDENCE = 0.9
#: g's predictions on held-out images spanning less than this are "constant".
CONSTANT_SPREAD = 1e-3


@dataclass
class Verdict:
    """The gate's answer for a batch: ``(N,)`` arrays."""

    decision: list[str]
    reason: list[str]
    predicted_jaccard: np.ndarray
    jaccard_lower: list[float | None]
    ood_distance: np.ndarray


@dataclass
class Gate:
    """The checks of one model: threshold, out-of-distribution detector, conformal margin, fitness."""

    threshold: float
    ood: OODDetector
    conformal: dict[str, Any]
    fitness: dict[str, Any] = field(default_factory=lambda: {"fit": True, "problems": []})

    @property
    def fit(self) -> bool:
        return bool(self.fitness.get("fit"))

    def decide(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        uncertainty: np.ndarray,
        quality: np.ndarray,
        probs: np.ndarray | None = None,
    ) -> Verdict:
        """Pass or refer ``(N, S, S, 3)`` images, given f's masks and maps and g's raw ``(N,)`` output
        (and f's probabilities, when given: checked finite like the rest)."""
        quality = np.asarray(quality, np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            features = image_features(images, masks, uncertainty)
            distance = self.ood.distance(features)
        finite = np.isfinite(quality) & np.isfinite(uncertainty.reshape(len(quality), -1)).all(axis=1)
        finite &= np.isfinite(features).all(axis=1)
        if probs is not None:  # NaN probabilities give an empty mask, not a NaN one: check them too
            finite &= np.isfinite(np.asarray(probs).reshape(len(quality), -1)).all(axis=1)
        ood = ~(distance <= self.ood.limit)
        clipped = np.clip(np.nan_to_num(quality, nan=0.0), 0.0, 1.0)
        margin = float(self.conformal["margin"])
        decisions, reasons, lower = [], [], []
        for i in range(len(quality)):
            why = [NOT_FINITE] if not finite[i] else []
            if finite[i] and ood[i]:
                why.append(OUT_OF_DISTRIBUTION)
            if finite[i] and not clipped[i] >= self.threshold:
                why.append(LOW_QUALITY)
            decisions.append("refer" if why else "pass")
            reasons.append("; ".join(why) or PASS_REASON)
            # The bound assumes an input like the held-out images: none for OOD or non-finite ones.
            lower.append(float(max(clipped[i] - margin, 0.0)) if finite[i] and not ood[i] else None)
        return Verdict(decisions, reasons, clipped, lower, distance)

    def to_config(self) -> dict[str, Any]:
        return {"ood": self.ood.to_config(), "conformal": self.conformal, "fitness": self.fitness}

    def with_threshold(
        self,
        threshold: float,
        heldout_predicted: np.ndarray,
        heldout_jaccard: np.ndarray,
        failure_jaccard: float,
    ) -> Gate:
        """This gate at another referral threshold, its fitness assessed again on the held-out images
        (g's ``heldout_predicted`` and their true ``heldout_jaccard``, the images the out-of-distribution
        limit and the conformal margin were set on; neither depends on the threshold)."""
        fitness = assess_fitness(heldout_predicted, heldout_jaccard, threshold, failure_jaccard)
        conformal, calibration = self.conformal, self.ood.calibration or {}
        if not conformal.get("guaranteed", True):
            fitness["notes"].append(
                f"{conformal.get('n_heldout')} held-out images are too few for a {conformal['confidence']:g} "
                "lower bound (it is 0 for every image)"
            )
        if not calibration.get("guaranteed", True):
            fitness["notes"].append(
                f"{calibration.get('n_heldout')} held-out images are too few to hold the "
                f"out-of-distribution false referral rate at {self.ood.alpha:g} "
                f"(need {calibration.get('min_heldout_for_alpha')})"
            )
        return Gate(float(threshold), self.ood, conformal, fitness)

    @classmethod
    def from_config(cls, config: Any, threshold: float) -> Gate:
        """Rebuild and check the manifest's ``gate``.

        Raises:
            ValueError: with what is wrong (the caller names the file).
        """
        if not isinstance(config, dict):
            raise ValueError("'gate' must be a JSON object")
        ood = OODDetector.from_config(config.get("ood"))
        conformal, fitness = config.get("conformal"), config.get("fitness")
        if not isinstance(conformal, dict):
            raise ValueError("'gate.conformal' must be a JSON object")
        margin, confidence = conformal.get("margin"), conformal.get("confidence")
        for name, value, low, high in (("margin", margin, -1.0, 1.0), ("confidence", confidence, 0.0, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(
                    f"'gate.conformal.{name}' must be a number in [{low:g}, {high:g}], got {value!r}"
                )
        if not isinstance(fitness, dict) or not isinstance(fitness.get("fit"), bool):
            raise ValueError("'gate.fitness' must be a JSON object with a boolean 'fit'")
        return cls(float(threshold), ood, conformal, fitness)


def conformal_margin(predicted: np.ndarray, true: np.ndarray, confidence: float) -> dict:
    """Split-conformal margin for a per-image lower bound of the true Jaccard.

    With residuals r = predicted - true on n held-out images, ``margin`` is their ceil((n + 1) C)-th
    smallest value; for a new exchangeable image, ``true >= predicted - margin`` with probability at
    least C (Vovk et al., 2005; Angelopoulos & Bates, 2021). With too few images for C the margin is
    1.0 (the bound is 0, which is always true) and ``guaranteed`` is false.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    residuals = np.sort(np.asarray(predicted, np.float64) - np.asarray(true, np.float64))
    n = residuals.size
    k = math.ceil((n + 1) * confidence)
    guaranteed = 0 < k <= n and bool(np.isfinite(residuals).all())
    margin = float(residuals[k - 1]) if guaranteed else 1.0
    return {"confidence": confidence, "margin": margin, "n_heldout": int(n), "guaranteed": guaranteed}


def assess_fitness(
    predicted: np.ndarray, true: np.ndarray, threshold: float, failure_jaccard: float
) -> dict[str, Any]:
    """Can this g do its job? Checked on held-out training images.

    Problems (any makes the model unfit): non-finite predictions; predictions that do not vary
    (spread below ``CONSTANT_SPREAD``); failures among the held-out images, none of them referred.
    Notes (recorded, not problems): no held-out failure, so failure recall could not be checked.
    """
    predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    problems, notes = [], []
    failed = true < failure_jaccard
    if not np.isfinite(predicted).all():
        problems.append("g's predictions on held-out images are not all finite")
    spread = float(np.ptp(predicted)) if predicted.size and np.isfinite(predicted).all() else math.nan
    if not spread >= CONSTANT_SPREAD:
        problems.append(f"g is constant (its predictions on held-out images span {spread:.2g})")
    referred = ~(predicted >= threshold)
    recall = float(referred[failed].mean()) if failed.any() else None
    if failed.any() and not referred[failed].any():
        problems.append(
            f"none of the {int(failed.sum())} held-out failures is referred at threshold {threshold:g}"
        )
    if not failed.any():
        notes.append("no held-out image is a failure, so failure recall could not be checked")
    return {
        "fit": not problems,
        "problems": problems,
        "notes": notes,
        "n_heldout": int(predicted.size),
        "n_heldout_failures": int(failed.sum()),
        "failure_recall": recall,
        "referral_rate": float(referred.mean()) if predicted.size else None,
        "prediction_spread": spread if math.isfinite(spread) else None,
    }


def gate_summary(config: dict[str, Any]) -> dict[str, Any]:
    """A manifest's gate without its detector's matrices: what people and services want to read."""
    gate = config.get("gate") or {}
    ood = gate.get("ood") or {}
    return {
        "fitness": gate.get("fitness"),
        "conformal": gate.get("conformal"),
        "ood": {k: ood.get(k) for k in ("kind", "limit", "alpha", "calibration")},
    }


def fit_gate(
    train: QualitySamples,
    heldout: QualitySamples,
    heldout_predicted: np.ndarray,
    threshold: float,
    failure_jaccard: float,
    *,
    bound_confidence: float = DEFAULT_BOUND_CONFIDENCE,
    ood_alpha: float = DEFAULT_ALPHA,
) -> Gate:
    """Learn the gate: the detector's Gaussian on the training images, its limit, the conformal margin
    and the fitness on held-out training images (``heldout`` with its true ``jaccard``; g's
    ``heldout_predicted``)."""
    features = image_features(train.images, train.masks, train.uncertainty)
    detector = OODDetector.fit(features, image_size=int(train.images.shape[1]))
    detector.calibrate(image_features(heldout.images, heldout.masks, heldout.uncertainty), ood_alpha)
    conformal = conformal_margin(heldout_predicted, heldout.jaccard, bound_confidence)
    gate = Gate(float(threshold), detector, conformal)
    return gate.with_threshold(threshold, heldout_predicted, heldout.jaccard, failure_jaccard)


def unfit_warning(model: Any) -> str | None:
    """The warning ``predict`` and ``serve`` show for a model written unfit (``train --force``), or None."""
    fitness = ((getattr(model, "config", None) or {}).get("gate") or {}).get("fitness") or {}
    if fitness.get("fit", False):
        return None
    problems = "; ".join(fitness.get("problems") or ["no fitness record"])
    return (
        f"this model failed its fitness check and was written with --force ({problems}): "
        "its decisions are unreliable"
    )
