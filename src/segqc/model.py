"""The one interface every loaded model offers, whatever runs it (PyTorch or ONNX Runtime)."""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from segqc.errors import BundleError, DeviceError
from segqc.gate import Gate
from segqc.integrity import check_seal, manifest_digest, read_json_object
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

    @property
    def gate(self) -> Gate:
        """The pass/refer checks: threshold, out-of-distribution detector, conformal margin, fitness."""

    @property
    def fit(self) -> bool:
        """False for a model written despite failing its fitness check (``segqc train --force``)."""

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
        return str(self.config.get("manifest_sha256") or manifest_digest(self.config))

    @cached_property
    def gate(self) -> Gate:
        """The pass/refer checks (:class:`segqc.gate.Gate`), built from the manifest once (it was
        validated at load), not on every assessment."""
        try:
            return Gate.from_config(self.config.get("gate"), self.threshold)
        except ValueError as err:
            raise BundleError(f"{getattr(self, 'path', 'model')}: {err}") from None

    @property
    def fit(self) -> bool:
        """False when the model was written with ``--force`` despite failing its fitness check."""
        return self.gate.fit


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
    config = read_json_object(file, kind)
    if "format" in config and config["format"] != version:
        raise BundleError(
            f"{file}: {what.split()[-1]} format {config['format']!r} is not supported (this segqc reads "
            f"format {version}); {redo} with this version"
        )
    return config


#: Smallest threshold a model may declare (below it nothing would be referred).
MIN_THRESHOLD = 0.01
#: Largest image side a model may declare (f and g run on S x S; 1024 is ~4x the paper's 224).
MAX_IMAGE_SIZE = 1024


def _number(config: dict[str, Any], key: str, low: float, high: float, file: Path, *, open_low: bool = True,
            open_high: bool = False) -> float:  # fmt: skip
    value = config.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        brackets = ("(" if open_low else "[") + f"{low:g}, {high:g}" + (")" if open_high else "]")
        raise BundleError(f"{file}: '{key}' must be a number in {brackets}, got {value!r}")
    return float(value)


def check_manifest(config: dict[str, Any], file: Path) -> None:
    """Check every manifest field that can change a decision, on both backends; a ``BundleError``
    naming the file and the field otherwise.

    Checks: the manifest checksum (:mod:`segqc.integrity`), ``threshold`` in [0.01, 1) and equal to
    its rule's, ``failure_jaccard`` in (0, 1), ``image_size`` a multiple of 16 up to
    :data:`MAX_IMAGE_SIZE` and equal to the size the gate's statistics were learned at, ``method`` and
    ``predictor`` names that agree with the pipeline, a non-negative integer ``pipeline.seed``, a
    finite positive ``uncertainty_vmax``, and the gate (out-of-distribution detector, conformal
    margin, fitness).
    """
    check_seal(config, file)
    # Below 0.01 nothing is ever referred: not a gate, whatever the manifest says.
    threshold = _number(config, "threshold", MIN_THRESHOLD, 1.0, file, open_low=False, open_high=True)
    rule = config.get("threshold_rule")
    if isinstance(rule, dict) and "threshold" in rule and rule["threshold"] != threshold:
        raise BundleError(
            f"{file}: 'threshold' {threshold!r} disagrees with its rule's {rule['threshold']!r}"
        )
    _number(config, "failure_jaccard", 0.0, 1.0, file, open_high=True)
    size = config.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= MAX_IMAGE_SIZE or size % 16:
        raise BundleError(
            f"{file}: image_size must be a multiple of 16 in [16, {MAX_IMAGE_SIZE}], got {size!r}"
        )
    for key in ("method", "predictor"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise BundleError(f"{file}: '{key}' must be a name, got {config.get(key)!r}")
    pipeline = config.get("pipeline")
    if pipeline is not None:
        if not isinstance(pipeline, dict):
            raise BundleError(f"{file}: 'pipeline' must be a JSON object")
        for key in ("image_size", "method"):
            if key in pipeline and pipeline[key] != config[key]:
                raise BundleError(
                    f"{file}: '{key}' is {config[key]!r} but the model was trained with {pipeline[key]!r}"
                )
        seed = pipeline.get("seed")  # the default seed of stochastic read-outs
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise BundleError(f"{file}: 'pipeline.seed' must be a non-negative integer, got {seed!r}")
    if config.get("uncertainty_vmax") is not None:
        _number(config, "uncertainty_vmax", 0.0, 1e6, file)
    try:
        gate = Gate.from_config(config.get("gate"), threshold)
    except ValueError as err:
        raise BundleError(f"{file}: {err}") from None
    if gate.ood.image_size != size:
        raise BundleError(
            f"{file}: 'image_size' is {size} but the model was trained with {gate.ood.image_size}"
        )


def check_normalisation(mean: Any, std: Any, file: Path) -> None:
    """Per-channel mean and std of f's input: 3 finite numbers each, std > 0."""
    for name, values in (("mean", mean), ("std", std)):
        ok = isinstance(values, list) and len(values) == 3
        ok = ok and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        )
        if not ok or (name == "std" and min(values) <= 0):
            raise BundleError(
                f"{file}: normalisation {name} must be 3 finite numbers{' > 0' if name == 'std' else ''}, "
                f"got {values!r}"
            )


def self_test(model: Model, file: Path) -> None:
    """Push a fixed image through f and g and check shapes and finiteness: a ``BundleError`` when a
    model that passed every file check still cannot compute (e.g. non-finite weights)."""
    size = model.image_size
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    image = np.stack([180 + 40 * xx, 130 + 30 * yy, 110 + 20 * xx * yy], axis=-1)
    disc = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.08
    image[disc] *= 0.5
    images = image.astype(np.uint8)[None]
    try:
        if getattr(getattr(model, "segmenter", None), "precomputed", False):  # no f: g on a plain map
            fg = np.where(disc, 0.9, 0.1).astype(np.float32)[None]
            pred = SegPrediction(fg, (fg > 0.5).astype(np.uint8), np.full_like(fg, 0.1))
        else:
            pred = model.segment(images)
        quality = np.asarray(model.predict_quality(QualitySamples(images, pred.mask, pred.uncertainty)))
    except DeviceError:
        raise  # the machine lacks the device asked for; the model is not at fault
    except Exception as err:  # any other failure of a loaded model on a plain image is a broken model
        raise BundleError(
            f"{file}: self-test failed: f and g cannot run ({type(err).__name__}: {err})"
        ) from None
    shape = (1, size, size)
    problems = [
        f"{name} has shape {tuple(array.shape)}, expected {shape}"
        for name, array in (("mask", pred.mask), ("uncertainty", pred.uncertainty), ("probs", pred.probs))
        if tuple(array.shape) != shape
    ]
    if quality.shape != (1,):
        problems.append(f"g gave shape {quality.shape}, expected (1,)")
    if not (
        np.isfinite(pred.probs).all() and np.isfinite(pred.uncertainty).all() and np.isfinite(quality).all()
    ):
        problems.append("outputs are not finite")
    if problems:
        raise BundleError(f"{file}: self-test failed: {'; '.join(problems)}")
