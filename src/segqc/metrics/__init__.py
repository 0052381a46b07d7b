"""Metrics: per-image segmentation overlap, and how well predicted quality matches true quality.

``jaccard`` / ``dice`` score masks; ``quality_metrics`` scores a quality predictor's per-image Jaccard
predictions against the true ones; :mod:`segqc.metrics.bootstrap` gives confidence intervals of
those metrics (over test images and seeds) and paired differences between rows.
``HIGHER_IS_BETTER`` gives the better direction of each key of ``quality_metrics`` (whose keys, in
order, are ``QUALITY_KEYS``).
"""

from __future__ import annotations

from segqc.metrics.bootstrap import (
    bootstrap_replicates,
    bootstrap_rows,
    paired_difference,
    quality_metrics_batch,
    resample_indices,
    seed_image_interval,
)
from segqc.metrics.quality import (
    HIGHER_IS_BETTER,
    QUALITY_KEYS,
    aurc,
    detection_error,
    quality_metrics,
    risk_coverage_curve,
)
from segqc.metrics.segmentation import dice, jaccard

__all__ = [
    "HIGHER_IS_BETTER",
    "QUALITY_KEYS",
    "aurc",
    "bootstrap_replicates",
    "bootstrap_rows",
    "detection_error",
    "dice",
    "jaccard",
    "paired_difference",
    "seed_image_interval",
    "quality_metrics",
    "quality_metrics_batch",
    "resample_indices",
    "risk_coverage_curve",
]
