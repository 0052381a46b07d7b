"""Reverse Classification Accuracy (RCA; Valindria et al. 2017, "Reverse Classification Accuracy:
Predicting Segmentation Performance in the Absence of Ground Truth"), with a cheap pixel classifier.

RCA's idea: a segmentation y^ of a test image x is used as pseudo ground truth to train a *reverse
classifier* on x alone; that classifier then segments a set of reference images whose ground truth
is known. If y^ is good, the classifier it teaches segments at least one similar reference well;
if y^ is bad, it segments every reference badly. The predicted quality of y^ is the best Jaccard
index reached on the references.

The reverse classifier here (the original used atlas registration, random forests or a CNN; 600
test images x 20 references must run in minutes on 2 CPU cores, so we use a closed-form one):

- **Features** (F = 11 per pixel): the RGB colour standardised per image (zero mean, unit variance
  per channel over the image's own pixels, so that a lesion is "darker than this image's skin" and
  the classifier transfers between images of different skin tones and exposures); the same colour
  blurred by Gaussians of sigma = size/32 and size/16 pixels (2 and 4 px at 64x64: local context
  and texture scale); and the pixel position (x, y) in [-1, 1] (lesion location and extent).
- **Classifier**: a Gaussian class-conditional model (quadratic discriminant analysis) fitted in
  closed form to the test image's pixels labelled by y^: for each class (lesion / background) the
  mean and full covariance of the features, the covariance shrunk towards the whole image's
  covariance with the weight of ``prior_strength`` pixels (so that a class of a few pixels still has
  a usable covariance), and the class prior from the mask (Laplace-smoothed). A reference pixel is
  lesion where the log-likelihood ratio is positive.
- **Choosing ``prior_strength``** (``"auto"``, the default): never on test images. ``fit`` holds
  out up to ``n_validation`` of the *training* images that are not references (seeded), corrupts
  their ground-truth masks in seeded, varied ways (dilated, eroded, shifted, replaced by a blob
  elsewhere, inverted, or left exact) so that their true Jaccard spans good to failed, and keeps
  the candidate of :data:`PRIOR_STRENGTHS` whose RCA predictions on them have the highest
  Spearman correlation with that true Jaccard (ties: the smaller candidate). Only training images
  and their ground truth are read, as for the references; f's predictions are not (RCA does not
  learn from them), and the test set is not passed to ``fit`` at all. A number instead of
  ``"auto"`` fixes the value.
- **Degenerate masks**: with an empty y^ (or a full one) there is no lesion (background) pixel to
  learn from, and the reverse classifier is the constant one: it labels every reference pixel
  background (lesion). Its quality is the best Jaccard of that constant segmentation against the
  references' ground truth (1.0 on a reference whose ground truth is also empty, as
  :func:`segqc.metrics.jaccard`); with lesions in every reference, an empty y^ scores 0.

Vectorisation: the log-likelihood ratio is a quadratic form in the features, so for every test
image it is one weight vector over the expanded features ``[x x^T, x, 1]`` of the reference pixels;
a chunk of test images is scored on all reference pixels with one matrix product.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import stats
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter
from torch import Tensor

from segqc.errors import DataError, SettingsError
from segqc.metrics import jaccard
from segqc.quality.base import QualityPredictor, check_training_samples, register_predictor
from segqc.types import QualitySamples

N_FEATURES = 11
#: Candidates of ``prior_strength="auto"`` (pixels of shrinkage), tried on held-out training images.
PRIOR_STRENGTHS = (4.0, 16.0, 64.0, 256.0, 1024.0)


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Per-pixel features of the reverse classifier.

    Args:
        images: ``(N, H, W, 3)`` uint8 RGB.
    Returns:
        ``(N, H * W, 11)`` float32: per-image standardised RGB, the same blurred at two scales, and
        the normalised (x, y) position.
    """
    n, h, w, _ = images.shape
    rgb = images.astype(np.float32) / 255.0
    mean = rgb.mean(axis=(1, 2), keepdims=True)
    std = np.maximum(rgb.std(axis=(1, 2), keepdims=True), 1e-3)
    rgb = (rgb - mean) / std
    parts = [rgb]
    for sigma in (h / 32.0, h / 16.0):
        parts.append(gaussian_filter(rgb, sigma=(0, sigma, sigma, 0), mode="reflect", truncate=3.0))
    yy, xx = np.meshgrid(
        np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32), indexing="ij"
    )
    parts.append(np.broadcast_to(np.stack([xx, yy], -1), (n, h, w, 2)))
    return np.concatenate(parts, axis=-1).reshape(n, h * w, -1)


def _expand(features: np.ndarray) -> np.ndarray:
    """``(M, F)`` features -> ``(M, F*F + F + 1)``: the terms of a quadratic form, ``[x x^T, x, 1]``."""
    m, f = features.shape
    outer = (features[:, :, None] * features[:, None, :]).reshape(m, f * f)
    return np.concatenate([outer, features, np.ones((m, 1), features.dtype)], axis=1)


def qda_weights(features: np.ndarray, masks: np.ndarray, prior_strength: float) -> np.ndarray:
    """Fit one Gaussian discriminant per image; return weights of its log-likelihood ratio.

    Args:
        features: ``(N, P, F)`` pixel features.
        masks: ``(N, P)`` labels in {0, 1} (1 = lesion).
        prior_strength: pixels' worth of shrinkage of each class covariance towards the image's.
    Returns:
        ``(F*F + F + 1, N)`` float32 weights ``w`` such that ``_expand(x) @ w`` is
        ``log p(lesion | x) - log p(background | x)``. Columns of degenerate images (one class
        absent) are meaningless; the caller replaces their decisions.
    """
    x = features.astype(np.float64)
    n, p, f = x.shape
    lab = masks.reshape(n, p).astype(np.float64)
    total_mean = x.mean(1)
    centred = x - total_mean[:, None]
    total_cov = np.einsum("npf,npg->nfg", centred, centred) / p
    eye = np.eye(f)
    quad, lin, const = np.zeros((n, f, f)), np.zeros((n, f)), np.zeros(n)
    for cls, sign in ((1.0, 1.0), (0.0, -1.0)):
        weight = lab if cls == 1.0 else 1.0 - lab
        count = weight.sum(1)
        mean = np.einsum("np,npf->nf", weight, x) / np.maximum(count, 1.0)[:, None]
        d = x - mean[:, None]
        raw = np.einsum("np,npf,npg->nfg", weight, d, d, optimize=True)  # count * covariance
        cov = (raw + prior_strength * total_cov) / (count + prior_strength)[:, None, None] + 1e-4 * eye
        inv = np.linalg.inv(cov)
        _, logdet = np.linalg.slogdet(cov)
        log_prior = np.log((count + 1.0) / (p + 2.0))
        inv_mean = np.einsum("nfg,ng->nf", inv, mean)
        # log N(x; mean, cov) + log prior = -x'Ax/2 + x'A mean - mean'A mean/2 - logdet/2 + log prior
        quad += sign * -0.5 * inv
        lin += sign * inv_mean
        const += sign * (-0.5 * np.einsum("nf,nf->n", mean, inv_mean) - 0.5 * logdet + log_prior)
    return np.concatenate([quad.reshape(n, f * f), lin, const[:, None]], axis=1).T.astype(np.float32)


def corrupt_masks(masks: np.ndarray, seed: int) -> np.ndarray:
    """Seeded corruptions of ground-truth masks ``(N, H, W)`` spanning good to failed: by image,
    in turn, exact, dilated, eroded, shifted, replaced by a square elsewhere, or inverted, with
    random strengths. Used to choose ``prior_strength`` on training images."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(masks, dtype=np.uint8)
    n, h, w = masks.shape
    for i in range(n):
        m = masks[i].astype(bool)
        kind = i % 6
        step = int(rng.integers(1, max(2, h // 8) + 1))
        if kind == 1:
            m = binary_dilation(m, iterations=step)
        elif kind == 2:
            m = binary_erosion(m, iterations=step)
        elif kind == 3:
            m = np.roll(
                m, (int(rng.integers(-h // 4, h // 4 + 1)), int(rng.integers(-w // 4, w // 4 + 1))), (0, 1)
            )
        elif kind == 4:
            side = int(rng.integers(max(1, h // 8), max(2, h // 2)))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            m = np.zeros_like(m)
            m[y : y + side, x : x + side] = True
        elif kind == 5:
            m = ~m
        out[i] = m
    return out


@register_predictor("rca")
class ReverseClassificationAccuracy(QualityPredictor):
    """RCA baseline: the best Jaccard a reverse classifier taught by ``(x, y^)`` reaches on references.

    ``fit`` keeps a seeded random subset of ``n_references`` training images with their ground-truth
    masks (not f's predictions: ``learns_from_predictions`` is False, so cross-fitting f does not
    change it); ``predict`` needs only the test images and predicted masks. See the module
    docstring for the reverse classifier.

    Args:
        n_references: reference images kept from the training set (all if fewer). Defaults to 20.
        prior_strength: shrinkage of the class covariances, in pixels, or ``"auto"`` (the default)
            to choose it among :data:`PRIOR_STRENGTHS` on held-out *training* images with corrupted
            ground-truth masks (see the module docstring); the value used is ``prior_strength_``.
            (Until this was added the default was 64, chosen on ISIC 2017 test images.)
        n_validation: held-out training images (not references) for ``"auto"``. Defaults to 48.
        chunk_size: test images scored per matrix product (memory vs speed). Defaults to 64.
        seed: chooses the references. Defaults to 0.
    """

    uses_uncertainty = False
    learns_from_predictions = False
    chosen_settings = ("prior_strength_", "validation_spearman_")

    def __init__(
        self,
        *,
        n_references: int = 20,
        prior_strength: float | str = "auto",
        n_validation: int = 48,
        chunk_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.n_references = n_references
        self.prior_strength = prior_strength
        self.n_validation = n_validation
        self.chunk_size = chunk_size
        self.seed = seed

    def fit(self, samples: QualitySamples) -> ReverseClassificationAccuracy:
        check_training_samples(samples)
        if samples.true_masks is None:
            raise DataError("rca needs the ground-truth masks of the training images (samples.true_masks)")
        if self.n_references < 1:
            raise SettingsError(f"n_references must be at least 1, got {self.n_references}")
        n = len(samples)
        rng = np.random.default_rng(self.seed)
        index = np.sort(rng.choice(n, size=min(self.n_references, n), replace=False))
        self.reference_index_ = index
        self.reference_images_ = np.ascontiguousarray(samples.images[index])
        self.reference_masks_ = np.ascontiguousarray(samples.true_masks[index]).astype(np.uint8)
        if self.prior_strength == "auto":
            self.prior_strength_, self.validation_spearman_ = self._choose_prior_strength(samples, index)
        elif isinstance(self.prior_strength, (int, float)) and self.prior_strength >= 0:
            self.prior_strength_, self.validation_spearman_ = float(self.prior_strength), {}
        else:
            raise SettingsError(
                f"prior_strength must be 'auto' or a number >= 0, got {self.prior_strength!r}"
            )
        return self

    def _choose_prior_strength(
        self, samples: QualitySamples, reference_index: np.ndarray
    ) -> tuple[float, dict[str, float]]:
        """The candidate with the best Spearman on held-out training images (see the module docstring)."""
        pool = np.setdiff1d(np.arange(len(samples)), reference_index)
        if pool.size < 3:  # every training image is a reference: validate on them (still no test data)
            pool = reference_index
        rng = np.random.default_rng([self.seed, 1])
        held = np.sort(rng.choice(pool, size=min(self.n_validation, pool.size), replace=False))
        truth = samples.true_masks[held].astype(np.uint8)
        masks = corrupt_masks(truth, seed=self.seed)
        true_j = jaccard(masks, truth)
        images = samples.images[held]
        scores: dict[str, float] = {}
        best, best_rho = PRIOR_STRENGTHS[0], -np.inf
        for candidate in PRIOR_STRENGTHS:
            q = self._predict(images, masks, candidate)
            rho = (
                float(stats.spearmanr(q, true_j)[0]) if np.ptp(q) > 0 and np.ptp(true_j) > 0 else float("nan")
            )
            scores[f"{candidate:g}"] = rho
            if np.isfinite(rho) and rho > best_rho:
                best, best_rho = candidate, rho
        self.validation_index_ = held
        return float(best), scores

    def predict(self, samples: QualitySamples) -> np.ndarray:
        """Predicted Jaccard ``(N,)`` in [0, 1] for the masks ``samples.masks`` of ``samples.images``."""
        self._check_fitted("reference_images_")
        if samples.images.shape[1:3] != self.reference_images_.shape[1:3]:
            raise DataError(
                f"rca: test images are {samples.images.shape[1:3]}, "
                f"references {self.reference_images_.shape[1:3]}"
            )
        return self._predict(samples.images, samples.masks, self.prior_strength_)

    def _predict(self, images: np.ndarray, masks_in: np.ndarray, prior_strength: float) -> np.ndarray:
        r = len(self.reference_images_)
        p = self.reference_masks_[0].size
        ref_design = _expand(pixel_features(self.reference_images_).reshape(r * p, -1))
        ref_true = self.reference_masks_.reshape(r, p).astype(np.float32)
        true_sum = ref_true.sum(1)
        out = np.empty(len(images), np.float64)
        for start in range(0, len(images), self.chunk_size):
            part = slice(start, min(start + self.chunk_size, len(images)))
            masks = masks_in[part].reshape(-1, p).astype(np.uint8)
            weights = qda_weights(pixel_features(images[part]), masks, prior_strength)
            # (R*P, k) decisions of each test image's reverse classifier on every reference pixel
            decide = torch.from_numpy(ref_design) @ torch.from_numpy(weights) > 0
            decide = decide.numpy().reshape(r, p, -1)
            n_fg = masks.sum(1)
            decide[:, :, n_fg == 0] = False  # constant classifiers for degenerate masks
            decide[:, :, n_fg == p] = True
            pred_sum = decide.sum(1, dtype=np.float32)  # (R, k)
            inter = np.einsum("rp,rpk->rk", ref_true, decide.astype(np.float32), optimize=True)
            union = pred_sum + true_sum[:, None] - inter
            jac = np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)
            out[part] = jac.max(0)
        return np.clip(out, 0.0, 1.0)

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        self._check_fitted("reference_images_")
        tensors = {
            "reference_images": torch.from_numpy(self.reference_images_),
            "reference_masks": torch.from_numpy(self.reference_masks_),
        }
        return tensors, {"params": self.get_params(), "prior_strength": self.prior_strength_}

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], config: dict[str, Any]) -> ReverseClassificationAccuracy:
        pred = cls(**config["params"])
        # bundles written before "auto" carry the number in params
        pred.prior_strength_ = float(
            config.get("prior_strength", config["params"].get("prior_strength", 64.0))
        )
        pred.reference_images_ = tensors["reference_images"].numpy().astype(np.uint8)
        pred.reference_masks_ = tensors["reference_masks"].numpy().astype(np.uint8)
        pred.reference_index_ = np.arange(len(pred.reference_images_))
        return pred
