"""Assess images in memory: f's mask and uncertainty map, g's predicted Jaccard, the pass/refer decision.

Works with any loaded :class:`~segqc.runtime.Model` (a PyTorch bundle or an ONNX export); this module
imports no torch itself, so the ONNX path runs without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from segqc.data.readers import resize_image
from segqc.errors import DataError
from segqc.external.predictions import precomputed_method
from segqc.postprocess import probs_to_mask, upsample_probs
from segqc.types import QualitySamples, SegPrediction

if TYPE_CHECKING:
    from segqc.runtime import Model


@dataclass
class Assessment:
    """The verdict on one image.

    Attributes:
        id: the image's id.
        predicted_jaccard: g's estimate of the Jaccard index of ``mask``, in [0, 1].
        decision: ``"pass"`` only when every check passes (finite outputs, input within the training
            distribution, ``predicted_jaccard >= threshold``); else ``"refer"`` (send to a human).
        reason: why: ``"ok"`` for a pass, else the failed checks in order of severity, joined by
            ``"; "`` (see :data:`segqc.gate.REASONS`).
        threshold: the bundle's threshold.
        jaccard_lower: a lower bound of the true Jaccard at the model's stated confidence (split
            conformal on held-out training images), or ``None`` when the model has none.
        mean_uncertainty: mean of f's uncertainty map at the model's resolution.
        mask: ``(H, W)`` uint8 in {0, 1}, at the input image's own resolution.
        uncertainty: ``(H, W)`` float32 uncertainty map, at the input image's own resolution.
    """

    id: str
    predicted_jaccard: float
    decision: str
    threshold: float
    mean_uncertainty: float
    mask: np.ndarray
    uncertainty: np.ndarray
    reason: str = "ok"
    jaccard_lower: float | None = None

    @property
    def referred(self) -> bool:
        return self.decision == "refer"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able fields (no arrays)."""
        return {
            "id": self.id,
            "predicted_jaccard": self.predicted_jaccard,
            "decision": self.decision,
            "reason": self.reason,
            "jaccard_lower": self.jaccard_lower,
            "threshold": self.threshold,
            "mean_uncertainty": self.mean_uncertainty,
        }


def _check_image(image: Any, id_: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise DataError(f"{id_}: expected an (H, W, 3) uint8 RGB image, got shape {shape} of {dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise DataError(f"{id_}: image has no pixels")
    return image


def assess_images(
    model: Model,
    images: Sequence[np.ndarray],
    ids: Sequence[str] | None = None,
    *,
    batch_size: int = 16,
    probabilities: Sequence[np.ndarray] | None = None,
) -> list[Assessment]:
    """Segment images with f, predict the quality of each segmentation with g, decide pass or refer.

    Each image is resized (bilinear) to the bundle's square ``image_size``; f's probability and
    uncertainty maps are resized back (bilinear) to the image's own size, and the mask is the
    resized probability thresholded at 0.5. The model's gate (:class:`segqc.gate.Gate`) decides on the
    resized image: pass only for finite outputs, an input like the training images and a predicted
    Jaccard at or above the threshold.

    Args:
        model: a loaded model (:func:`segqc.runtime.load_model`: a bundle or an ONNX export).
        images: ``(H, W, 3)`` uint8 RGB images, each of any size.
        ids: one id per image. Defaults to ``"0"``, ``"1"``, ...
        batch_size: images per forward pass. Defaults to 16.
        probabilities: precomputed outputs of f instead of running it: per image a ``(K, H, W)``
            float array of foreground probabilities in [0, 1] at the image's own size (K = 1: one
            map; K > 1: samples of a stochastic model or an ensemble's members). The model's method
            reads them out into the mask and map at the image's size (its ``precomputed_map``, with the
            bundle's ``method_params``: ``msp``, ``mcdropout`` or ``ensemble``), g and the gate see them
            resized to ``image_size``. Defaults to none (f runs).

    Returns:
        One :class:`Assessment` per image, in order.

    Raises:
        DataError: an image is not an ``(H, W, 3)`` uint8 array, ``ids`` or ``probabilities`` has the
            wrong length, a probability array does not fit its image, or the model's method reads out
            no precomputed outputs.
    """
    ids = [str(i) for i in range(len(images))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(images):
        raise DataError(f"got {len(images)} images but {len(ids)} ids")
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    checked = [_check_image(image, id_) for image, id_ in zip(images, ids)]
    given, method = None, None
    if probabilities is not None:
        if checked:  # (an empty batch, e.g. every image of a chunk refused, needs no read-out)
            method = precomputed_method(model.method, model.config.get("method_params"))
        if len(probabilities) != len(images):
            raise DataError(f"got {len(images)} images but {len(probabilities)} probability arrays")
        given = [_check_probabilities(p, image, id_) for p, image, id_ in zip(probabilities, checked, ids)]
        for p, id_ in zip(given, ids):
            try:
                method.check_precomputed(p)  # type: ignore[union-attr]
            except DataError as err:
                raise DataError(f"{id_}: precomputed probabilities: {err}") from None
    size, threshold, gate = model.image_size, model.threshold, model.gate
    out: list[Assessment] = []
    for start in range(0, len(checked), batch_size):
        batch = checked[start : start + batch_size]
        small = np.stack([resize_image(np.ascontiguousarray(image), size) for image in batch])
        full = None
        if given is not None and method is not None:
            full = [method.precomputed_map(p) for p in given[start : start + batch_size]]
        if full is None:
            pred = model.segment(small)
        else:  # f's outputs given: g and the gate see them at the model's size, as they would f's
            fg = np.stack([upsample_probs(p[None], size, size)[0] for p, _ in full])
            z = np.stack([upsample_probs(u[None], size, size)[0] for _, u in full])
            pred = SegPrediction(fg, probs_to_mask(fg), z.astype(np.float32))
        quality = model.predict_quality(QualitySamples(small, pred.mask, pred.uncertainty))
        verdict = gate.decide(small, pred.mask, pred.uncertainty, quality, pred.probs)
        for j, image in enumerate(batch):
            h, w = image.shape[:2]
            if full is not None:  # given at the image's own size
                probs, uncertainty = full[j]
            else:
                # Resize probabilities, not the mask, so borders stay smooth at high resolution.
                probs = upsample_probs(pred.probs[j : j + 1], h, w)[0]
                uncertainty = upsample_probs(pred.uncertainty[j : j + 1], h, w)[0].astype(np.float32)
            out.append(
                Assessment(
                    id=ids[start + j],
                    predicted_jaccard=float(verdict.predicted_jaccard[j]),
                    decision=verdict.decision[j],
                    reason=verdict.reason[j],
                    jaccard_lower=verdict.jaccard_lower[j],
                    threshold=threshold,
                    mean_uncertainty=float(pred.uncertainty[j].mean()),
                    mask=probs_to_mask(probs),
                    uncertainty=uncertainty,
                )
            )
    return out


def _check_probabilities(probs: Any, image: np.ndarray, id_: str) -> np.ndarray:
    try:
        raw = np.asarray(probs)
    except (ValueError, TypeError):  # ragged nested lists
        raw = np.asarray(None, object)
    if raw.dtype.kind not in "fiub":  # complex (its imaginary part dropped), strings, objects
        raise DataError(
            f"{id_}: precomputed probabilities must be a real numeric (K, H, W) array, got "
            f"{raw.dtype if raw.dtype != object else type(probs).__name__}"
        )
    p = np.asarray(raw, dtype=np.float32)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or len(p) < 1 or p.shape[1:] != image.shape[:2]:
        raise DataError(
            f"{id_}: precomputed probabilities of shape {np.shape(probs)} do not fit the image "
            f"{image.shape[0]}x{image.shape[1]}: expected (K, {image.shape[0]}, {image.shape[1]})"
        )
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise DataError(f"{id_}: precomputed probabilities must be finite and in [0, 1]")
    return p
