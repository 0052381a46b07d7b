"""The one interface every loaded model offers, whatever runs it (PyTorch or ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from segqc.errors import BundleError
from segqc.types import QualitySamples, SegPrediction


@runtime_checkable
class Model(Protocol):
    """A loaded f and g with their decision rule: what ``predict``, ``serve`` and the library use.

    Attributes:
        backend: ``"torch"`` (a bundle from ``segqc train``) or ``"onnx"`` (from ``segqc export``).
        path: the model folder.
        config: its parsed manifest (``bundle.json`` or ``export.json``).
    """

    backend: str
    path: Path
    config: dict[str, Any]

    @property
    def threshold(self) -> float:
        """Predicted Jaccard below which a segmentation is referred to a human."""

    @property
    def image_size(self) -> int:
        """Side of the square images f and g work on; callers resize inputs to it."""

    @property
    def method(self) -> str:
        """The uncertainty method of f."""

    @property
    def uncertainty_vmax(self) -> float | None:
        """Top of the colour scale of uncertainty heat maps (largest value seen in training)."""

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of the model's manifest: names this exact model in logs and answers."""

    def segment(self, images: np.ndarray) -> SegPrediction:
        """f on ``(N, S, S, 3)`` uint8 images, ``S = image_size``: probabilities, masks, uncertainty maps."""

    def predict_quality(self, samples: QualitySamples) -> np.ndarray:
        """g: ``(N,)`` predicted Jaccard of each (image, mask, map)."""

    def metadata(self) -> dict[str, Any]:
        """A JSON-able summary for people and services (no weights)."""


class ManifestModel:
    """The :class:`Model` properties read from a model's manifest, shared by both backends."""

    config: dict[str, Any]

    @property
    def threshold(self) -> float:
        """Predicted Jaccard below which a segmentation is referred to a human."""
        return float(self.config["threshold"])

    @property
    def image_size(self) -> int:
        """Side of the square images f and g work on; inputs are resized to it."""
        return int(self.config["image_size"])

    @property
    def method(self) -> str:
        """Uncertainty method of f (e.g. ``"msp"``)."""
        return str(self.config["method"])

    @property
    def uncertainty_vmax(self) -> float | None:
        """Top of the colour scale of uncertainty heat maps (the largest value seen in training)."""
        value = self.config.get("uncertainty_vmax")
        return float(value) if value else None

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of the manifest (:mod:`segqc.integrity`): names this exact model in logs and answers."""
        from segqc.integrity import manifest_digest

        return str(self.config.get("manifest_sha256") or manifest_digest(self.config))


def read_manifest_json(
    folder: Path, name: str, what: str, kind: str, *, version: int, redo: str
) -> dict[str, Any]:
    """The JSON object ``folder/name`` (a model's manifest) of layout ``version``, or a ``BundleError``
    naming the file.

    ``what`` names the folder (``model bundle``, ``ONNX export``), ``kind`` the file (``bundle config``),
    ``redo`` what a user does about another layout version (``retrain the model``).
    """
    if not folder.is_dir():
        raise BundleError(f"{folder}: {what} folder not found")
    file = folder / name
    if not file.is_file():
        raise BundleError(f"{folder}: not {'an' if what[0] in 'AEIOU' else 'a'} {what} ({name} not found)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BundleError(f"{file}: cannot read {kind} ({err})") from None
    if not isinstance(config, dict):
        raise BundleError(f"{file}: {kind} must be a JSON object")
    if "format" in config and config["format"] != version:
        raise BundleError(
            f"{file}: {what.split()[-1]} format {config['format']!r} is not supported (this segqc reads "
            f"format {version}); {redo} with this version"
        )
    return config
