"""Per-image overlap between a predicted and a ground-truth binary mask.

Both functions take numpy arrays or torch tensors of shape ``(H, W)`` (one image) or ``(N, H, W)`` (a batch),
of any dtype: every nonzero value is foreground. One image gives a Python ``float``; a batch gives a
``numpy.float64`` array of shape ``(N,)``, also for torch input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["dice", "jaccard"]


def _as_mask(x: Any) -> np.ndarray:
    """Any array-like (numpy, torch on any device, nested lists) as a numpy bool mask, nonzero = True."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor; duck-typed so torch is not imported
        x = x.detach().cpu().numpy()
    return np.asarray(x) != 0


def _overlap(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Intersection, |pred| and |target| per image as float64 arrays ``(N,)``, and whether input was 2-D."""
    p, t = _as_mask(pred), _as_mask(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: pred {p.shape} vs target {t.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"masks must have shape (H, W) or (N, H, W); got {p.shape}")
    single = p.ndim == 2
    if single:
        p, t = p[None], t[None]
    inter = np.logical_and(p, t).sum(axis=(1, 2), dtype=np.float64)
    return inter, p.sum(axis=(1, 2), dtype=np.float64), t.sum(axis=(1, 2), dtype=np.float64), single


def _finish(num: np.ndarray, den: np.ndarray, empty: float, single: bool) -> float | np.ndarray:
    out = np.full(num.shape, float(empty), dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return float(out[0]) if single else out


def jaccard(pred: Any, target: Any, *, empty: float = 1.0) -> float | np.ndarray:
    """Jaccard index (intersection over union) of each image, ``|P & T| / |P | T|``.

    Args:
        pred: Predicted mask(s), shape ``(H, W)`` or ``(N, H, W)``; numpy array or torch tensor, bool or
            0/1 ints/floats (nonzero = foreground).
        target: Ground-truth mask(s), same shape as ``pred``.
        empty: Value given to an image where both masks are empty (union 0). The default 1.0 scores a
            correct "no lesion" answer as perfect; pass ``float("nan")`` to mark such images instead.

    Returns:
        A ``float`` for ``(H, W)`` input, else a float64 numpy array of shape ``(N,)``.

    Raises:
        ValueError: If the shapes differ (both are named) or are not 2-D / 3-D.

    Examples:
        >>> import numpy as np
        >>> jaccard(np.array([[1, 1], [0, 0]]), np.array([[1, 0], [0, 0]]))
        0.5
        >>> jaccard(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))
        array([1., 1.])
    """
    inter, sp, st, single = _overlap(pred, target)
    return _finish(inter, sp + st - inter, empty, single)


def dice(pred: Any, target: Any, *, empty: float = 1.0) -> float | np.ndarray:
    """Dice coefficient (F1 score) of each image, ``2 |P & T| / (|P| + |T|)``.

    Args:
        pred: Predicted mask(s), shape ``(H, W)`` or ``(N, H, W)``; numpy array or torch tensor, bool or
            0/1 ints/floats (nonzero = foreground).
        target: Ground-truth mask(s), same shape as ``pred``.
        empty: Value given to an image where both masks are empty (``|P| + |T| = 0``). The default 1.0
            scores a correct "no lesion" answer as perfect; pass ``float("nan")`` to mark such images instead.

    Returns:
        A ``float`` for ``(H, W)`` input, else a float64 numpy array of shape ``(N,)``.

    Raises:
        ValueError: If the shapes differ (both are named) or are not 2-D / 3-D.

    Examples:
        >>> import numpy as np
        >>> round(dice(np.array([[1, 1], [0, 0]]), np.array([[1, 0], [0, 0]])), 4)
        0.6667
        >>> dice(np.zeros((2, 2)), np.zeros((2, 2)), empty=0.0)
        0.0
    """
    inter, sp, st, single = _overlap(pred, target)
    return _finish(2.0 * inter, sp + st, empty, single)
