"""Pictures of segmentations: error overlays (TP green, FP red, FN blue) and uncertainty heat maps."""

from __future__ import annotations

import numpy as np

TP_COLOUR = np.array([0, 200, 0], np.float32)
FP_COLOUR = np.array([230, 0, 0], np.float32)
FN_COLOUR = np.array([0, 90, 255], np.float32)
MASK_COLOUR = np.array([255, 200, 0], np.float32)


def _blend(image: np.ndarray, where: np.ndarray, colour: np.ndarray, alpha: float) -> None:
    image[where] = (1 - alpha) * image[where] + alpha * colour


def error_overlay(image: np.ndarray, pred: np.ndarray, true: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(H, W, 3)`` uint8 image with true positives green, false positives red, false negatives blue."""
    out = image.astype(np.float32).copy()
    pred, true = pred.astype(bool), true.astype(bool)
    _blend(out, pred & true, TP_COLOUR, alpha)
    _blend(out, pred & ~true, FP_COLOUR, alpha)
    _blend(out, ~pred & true, FN_COLOUR, alpha)
    return out.clip(0, 255).astype(np.uint8)


def mask_overlay(image: np.ndarray, pred: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """``(H, W, 3)`` uint8 image with the predicted mask tinted and its border drawn (no ground truth)."""
    out = image.astype(np.float32).copy()
    pred = pred.astype(bool)
    _blend(out, pred, MASK_COLOUR, alpha)
    border = pred & ~_erode(pred)
    out[border] = MASK_COLOUR
    return out.clip(0, 255).astype(np.uint8)


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, mode="edge")
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def heatmap(uncertainty: np.ndarray, vmax: float | None = None, cmap: str = "magma") -> np.ndarray:
    """``(H, W)`` uncertainty -> ``(H, W, 3)`` uint8 colour map, scaled to ``[0, vmax]``.

    ``vmax`` defaults to the map's own maximum, so the brightest pixel is the least sure one.
    """
    from matplotlib import colormaps

    top = float(uncertainty.max()) if vmax is None else float(vmax)
    scaled = np.clip(uncertainty / top, 0, 1) if top > 0 else np.zeros_like(uncertainty)
    # A 256-entry lookup table: the same colours as calling the colormap per pixel, ~10x faster.
    lut = (colormaps[cmap](np.arange(256))[:, :3] * 255).astype(np.uint8)
    return lut[np.minimum((scaled * 256).astype(np.int32), 255)]
