"""NumPy post-processing of f's outputs, shared by every backend (PyTorch and ONNX Runtime).

What happens between the networks and a decision, outside any graph: batching, the mean, entropy and
mutual information of sampled probabilities (MC dropout, ensembles, test-time augmentation, or samples
of an external model), foreground probability to mask, and the bilinear resize of maps back to an
image's own resolution. This module imports no torch, so the ONNX Runtime backend runs without it;
the PyTorch backend uses the same functions, so both agree by construction.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from segqc.errors import SegQCError
from segqc.types import SegPrediction

#: A pixel is foreground when its foreground probability is above this.
MASK_THRESHOLD = 0.5


def batches(n: int, size: int) -> list[slice]:
    """``[0, n)`` cut into consecutive slices of at most ``size`` items."""
    return [slice(i, min(i + size, n)) for i in range(0, n, max(1, size))]


def pixel_batch(height: int, width: int, pixels: int = 2**16) -> int:
    """Images per prediction batch on a CPU: about ``pixels`` pixels per batch keeps the
    activations in the caches (16 images at 64 px, 4 at 128, 1 at 224)."""
    return max(1, pixels // (height * width))


def probs_to_mask(probs: np.ndarray) -> np.ndarray:
    """Foreground probabilities -> uint8 mask in {0, 1}."""
    return (np.asarray(probs) > MASK_THRESHOLD).astype(np.uint8)


def _p_log_p(p: np.ndarray) -> np.ndarray:
    """``p ln p`` element-wise with ``0 ln 0 = 0``, float32."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).astype(np.float32)


def entropy(probs: np.ndarray, axis: int = 1) -> np.ndarray:
    """Shannon entropy in nats along ``axis``, ``-sum_c p_c ln p_c`` with ``0 ln 0 = 0``, float32."""
    return np.maximum(-_p_log_p(np.asarray(probs, dtype=np.float32)).sum(axis), 0.0)


def binary_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in nats of a foreground probability ``p`` (two classes, ``p`` and ``1 - p``), element-wise,
    in ``[0, ln 2]``, float32. Equals :func:`entropy` of the two-channel probabilities."""
    p = np.clip(np.asarray(probs, dtype=np.float32), 0.0, 1.0)
    return np.maximum(-(_p_log_p(p) + _p_log_p(1.0 - p)), 0.0)


#: Maps of a stack of probability samples (:func:`combine_samples`).
SAMPLE_MAPS = ("entropy", "mutual_information")


def combine_samples(
    samples: np.ndarray, axis: int = 1, uncertainty: str = "entropy"
) -> tuple[np.ndarray, np.ndarray]:
    """Mean foreground probability of a stack of samples and its uncertainty map, float32.

    For any source of samples of f's foreground probability along ``axis`` (ensemble members, views of
    test-time augmentation, dropout samples, or samples precomputed by an external model), e.g.
    ``(N, K, S, S)`` with ``axis=1``.

    Args:
        samples: foreground probabilities in ``[0, 1]``, ``K >= 1`` samples along ``axis``.
        axis: the sample axis.
        uncertainty: ``"entropy"``: the binary entropy of the mean, ``H(mean)`` (total uncertainty);
            ``"mutual_information"``: ``H(mean) - mean_k H(p_k)`` (Depeweg et al. 2018: the part due to
            disagreement between samples, epistemic), clamped to ``[0, H(mean)]`` against rounding.
    Returns:
        ``(mean, map)``, each with ``axis`` removed.
    """
    if uncertainty not in SAMPLE_MAPS:
        raise SegQCError(f"the map must be one of {', '.join(SAMPLE_MAPS)}, got {uncertainty!r}")
    p = np.asarray(samples, dtype=np.float32)
    mean = p.mean(axis, dtype=np.float32)
    total = binary_entropy(mean)
    if uncertainty == "entropy":
        return mean, total
    return mean, mutual_information(p, axis, total=total)


def mutual_information(samples: np.ndarray, axis: int = 1, *, total: np.ndarray | None = None) -> np.ndarray:
    """Mutual information in nats between the prediction and the sample, ``H(mean_k p_k) - mean_k H(p_k)``,
    of foreground probability samples along ``axis``; in ``[0, H(mean)]``, float32.

    ``total``: ``binary_entropy`` of the mean, if the caller has it already.
    """
    p = np.asarray(samples, dtype=np.float32)
    if total is None:
        total = binary_entropy(p.mean(axis, dtype=np.float32))
    expected = binary_entropy(p).mean(axis, dtype=np.float32)
    return np.clip(total - expected, 0.0, total)


def two_class_map(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(K, H, W)`` foreground probabilities -> foreground probability ``(H, W)`` and uncertainty
    ``(H, W)``: for K = 1 ``1 - max(p, 1 - p)``, else the entropy of the mean (nats), float32. The map
    of precomputed outputs that ``msp`` (one map) and ``mcdropout`` (samples) bundles were trained on."""
    samples = np.asarray(samples, np.float32)
    p = samples.mean(0)
    if len(samples) == 1:
        return p, (1.0 - np.maximum(p, 1.0 - p)).astype(np.float32)
    return p, entropy(np.stack([1.0 - p, p]), axis=0)


def upsample_probs(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of ``(N, h, w)`` maps to ``(N, height, width)``, float32.

    Half-pixel centres, source coordinates clamped at 0, no antialiasing: the same arithmetic as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.
    """
    maps = np.asarray(probs, dtype=np.float32)

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.minimum(src.astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(np.float32)

    y0, y1, wy = axis(maps.shape[1], height)
    x0, x1, wx = axis(maps.shape[2], width)
    rows = maps[:, y0] * (1.0 - wy)[None, :, None] + maps[:, y1] * wy[None, :, None]  # (N, height, w)
    return rows[:, :, x0] * (1.0 - wx) + rows[:, :, x1] * wx


def segment_batches(
    read_out: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], images: np.ndarray, batch_size: int
) -> SegPrediction:
    """Run ``read_out`` (images -> foreground probability, uncertainty) batch by batch; add the masks."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    probs, uncertainty = [], []
    for part in batches(len(images), batch_size):
        p, z = read_out(images[part])
        probs.append(np.asarray(p, np.float32))
        uncertainty.append(np.asarray(z, np.float32))
    if not probs:
        empty = np.zeros((0, *images.shape[1:3]), np.float32)
        return SegPrediction(empty, empty.astype(np.uint8), empty)
    fg = np.concatenate(probs)
    return SegPrediction(probs=fg, mask=probs_to_mask(fg), uncertainty=np.concatenate(uncertainty))
