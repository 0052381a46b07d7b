"""Out-of-distribution referral: does an input look like anything the model was trained on?

g predicts the quality of a segmentation only for inputs like its training images; on a black image,
a photograph or noise its answer means nothing (it often says "excellent"). The detector scores each
input by the Mahalanobis distance (Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018) of a vector of image and
segmentation statistics (colour, chromaticity, texture, vignetting, f's uncertainty and mask) from
the training images' Gaussian, with a Ledoit-Wolf shrunk covariance (Ledoit & Wolf, 2004). Statistics
rather than network features, so that the same NumPy code scores inputs on every backend (PyTorch
bundles and ONNX exports) and a new uncertainty method needs nothing here.

The limit is a split-conformal quantile of the distances of held-out training images: an
in-distribution input exceeds it with probability at most ``alpha`` (default 1%) when the held-out
and new images are exchangeable (Vovk et al., 2005). Inputs beyond it are referred as
``out-of-distribution`` whatever g says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Names of the statistics, in order. A model stores them; another list means another detector.
FEATURES = (
    "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
    "chroma_r", "chroma_g", "saturation", "dark_fraction", "bright_fraction",
    "gradient", "laplacian", "coarse_std", "centre_minus_border", "gray_entropy",
    "uncertainty_mean", "uncertainty_p95", "mask_fraction", "mask_border",
)  # fmt: skip
KIND = "mahalanobis-image-stats-v2"
#: Default share of in-distribution inputs referred as out-of-distribution.
DEFAULT_ALPHA = 0.01


def image_features(images: np.ndarray, masks: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
    """``(N, len(FEATURES))`` float64 statistics of ``(N, S, S, 3)`` uint8 images, f's ``(N, S, S)``
    masks and uncertainty maps. Non-finite map values give non-finite features (the caller refers)."""
    x = images.astype(np.float32) / 255.0
    n = x.shape[0]
    rgb_mean = x.mean(axis=(1, 2))
    rgb_std = x.std(axis=(1, 2))
    total = x.sum(axis=3) + 1e-3
    chroma = np.stack([(x[..., 0] / total).mean(axis=(1, 2)), (x[..., 1] / total).mean(axis=(1, 2))], 1)
    hi, lo = x.max(axis=3), x.min(axis=3)
    saturation = ((hi - lo) / (hi + 1e-3)).mean(axis=(1, 2))
    dark = (hi < 0.08).mean(axis=(1, 2))
    bright = (lo > 0.92).mean(axis=(1, 2))
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    dx, dy = np.abs(np.diff(gray, axis=2)), np.abs(np.diff(gray, axis=1))
    gradient = dx.mean(axis=(1, 2)) + dy.mean(axis=(1, 2))
    lap = np.abs(gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:] + gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1]
                 - 4 * gray[:, 1:-1, 1:-1]).mean(axis=(1, 2))  # fmt: skip
    s = gray.shape[1]
    k = max(1, s // 8)
    cropped = gray[:, : s // k * k, : gray.shape[2] // k * k]
    coarse = cropped.reshape(n, s // k, k, -1, k).mean(axis=(2, 4)).std(axis=(1, 2))
    c0, c1 = s // 4, s - s // 4
    centre = gray[:, c0:c1, c0:c1].mean(axis=(1, 2))
    border = np.concatenate([gray[:, :c0].reshape(n, -1), gray[:, c1:].reshape(n, -1)], 1).mean(axis=1)
    hist = np.stack([np.histogram(g, bins=16, range=(0.0, 1.0))[0] for g in gray]).astype(np.float64)
    p = hist / hist.sum(axis=1, keepdims=True)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    u = uncertainty.astype(np.float64).reshape(n, -1)
    finite_rows = np.isfinite(u).all(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        u_mean = u.mean(axis=1)
    u_p95 = np.full(n, np.nan)  # a map with a non-finite value gives a non-finite feature (refer)
    if finite_rows.any():
        u_p95[finite_rows] = np.percentile(u[finite_rows], 95, axis=1)
    m = masks.astype(np.float64)
    mask_fraction = m.mean(axis=(1, 2))
    edge = np.concatenate([m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1]], axis=1).mean(axis=1)
    # Scale-like statistics on a log scale: a flat frame (no texture at all) is then far from skin,
    # not merely "a little less textured".
    log = lambda v: np.log(np.asarray(v, np.float64) + 1e-3)  # noqa: E731
    columns = [
        *rgb_mean.T, *log(rgb_std).T, *chroma.T, saturation, dark, bright, log(gradient), log(lap),
        log(coarse), centre - border, entropy, u_mean, u_p95, mask_fraction, edge,
    ]  # fmt: skip
    return np.stack([np.asarray(c, np.float64) for c in columns], axis=1)


@dataclass
class OODDetector:
    """A Gaussian of training statistics and a limit on the Mahalanobis distance from it.

    Attributes:
        center: ``(D,)`` mean of the standardised training features.
        scale: ``(D,)`` per-feature standard deviation used to standardise.
        precision: ``(D, D)`` inverse of the shrunk covariance of the standardised features.
        limit: distances above it are out-of-distribution.
        alpha: the in-distribution referral rate the limit was set for.
        calibration: how the limit was set (held-out size, their flagged share).
        image_size: side of the images the statistics were computed at (the model's ``image_size``).
    """

    center: np.ndarray
    scale: np.ndarray
    precision: np.ndarray
    limit: float = math.inf
    alpha: float = DEFAULT_ALPHA
    calibration: dict[str, Any] | None = None
    image_size: int | None = None

    @classmethod
    def fit(cls, features: np.ndarray, image_size: int | None = None) -> OODDetector:
        """Fit the Gaussian on training features (``limit`` is set by :meth:`calibrate`)."""
        from sklearn.covariance import LedoitWolf

        features = np.asarray(features, np.float64)
        if features.ndim != 2 or len(features) < 2 or not np.isfinite(features).all():
            raise ValueError("need at least 2 finite feature rows to fit the detector")
        scale = features.std(axis=0)
        scale = np.where(scale > 1e-6, scale, 1e-6)
        center = features.mean(axis=0)
        z = (features - center) / scale
        covariance = LedoitWolf().fit(z).covariance_
        precision = np.linalg.pinv(covariance, hermitian=True)
        return cls(center=center, scale=scale, precision=precision, image_size=image_size)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` Mahalanobis distances; NaN where a feature is not finite."""
        z = (np.asarray(features, np.float64) - self.center) / self.scale
        with np.errstate(invalid="ignore", over="ignore"):
            d2 = np.einsum("nd,de,ne->n", z, self.precision, z)
        return np.sqrt(np.maximum(d2, 0.0))

    def calibrate(self, features: np.ndarray, alpha: float = DEFAULT_ALPHA) -> OODDetector:
        """Set ``limit`` to the split-conformal ``1 - alpha`` quantile of held-out distances.

        With n held-out images, the limit is the ceil((n + 1)(1 - alpha))-th smallest distance; when
        that exceeds n (too few images for this alpha), it is the largest distance and ``calibration``
        says the rate is not guaranteed.
        """
        d = np.sort(self.distance(features))
        if d.size == 0 or not np.isfinite(d).all():
            raise ValueError("held-out features must be finite and non-empty")
        k = math.ceil((d.size + 1) * (1.0 - alpha))
        guaranteed = k <= d.size
        self.limit = float(d[min(k, d.size) - 1])
        self.alpha = float(alpha)
        self.calibration = {
            "n_heldout": int(d.size),
            "heldout_flagged": float((d > self.limit).mean()),
            "guaranteed": guaranteed,
            "min_heldout_for_alpha": math.ceil(1.0 / alpha - 1.0),
        }
        return self

    def flag(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: out-of-distribution (beyond the limit, or not finite: fail closed)."""
        d = self.distance(features)
        return ~(d <= self.limit)

    def to_config(self) -> dict[str, Any]:
        """JSON-able form stored in a model's manifest."""
        return {
            "kind": KIND,
            "features": list(FEATURES),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "precision": self.precision.tolist(),
            "limit": self.limit,
            "alpha": self.alpha,
            "calibration": self.calibration,
            "image_size": self.image_size,
        }

    @classmethod
    def from_config(cls, config: Any) -> OODDetector:
        """Rebuild from :meth:`to_config`, checking every field.

        Raises:
            ValueError: with what is wrong (the caller names the file).
        """
        if not isinstance(config, dict):
            raise ValueError("'ood' must be a JSON object")
        if config.get("kind") != KIND or config.get("features") != list(FEATURES):
            raise ValueError(f"'ood' is not a {KIND} detector with this segqc's features")
        d = len(FEATURES)
        try:
            center = np.asarray(config["center"], np.float64)
            scale = np.asarray(config["scale"], np.float64)
            precision = np.asarray(config["precision"], np.float64)
            limit, alpha = config["limit"], config["alpha"]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"'ood' has a missing or non-numeric field ({err})") from None
        if center.shape != (d,) or scale.shape != (d,) or precision.shape != (d, d):
            raise ValueError(f"'ood' center/scale/precision must have {d}/{d}/{d}x{d} numbers")
        if not (np.isfinite(center).all() and np.isfinite(scale).all() and np.isfinite(precision).all()):
            raise ValueError("'ood' has non-finite numbers")
        if (scale <= 0).any() or not np.allclose(precision, precision.T, atol=1e-8):
            raise ValueError("'ood' scale must be positive and precision symmetric")
        if (np.linalg.eigvalsh(precision) < -1e-8).any():
            raise ValueError("'ood' precision must be positive semi-definite")
        for name, value, low, high in (("limit", limit, 0.0, 1e6), ("alpha", alpha, 0.0, 0.5)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
                raise ValueError(f"'ood.{name}' must be a number in ({low:g}, {high:g}], got {value!r}")
        size = config.get("image_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"'ood.image_size' must be a positive integer, got {size!r}")
        return cls(center, scale, precision, float(limit), float(alpha), config.get("calibration"), size)
