"""Model bundles: a fitted segmenter f and quality predictor g, saved as one folder.

A bundle folder holds::

    f.safetensors   weights of f (the U-Net of the uncertainty method), or, for an external f
                    (``segqc train --segmenter MODEL.onnx``), ``segmenter.onnx``: a copy of that model,
                    with its SPEC in ``bundle.json`` (``segmenter.external``); for an ensemble of K
                    external models (``--segmenter`` K times), ``segmenter-0.onnx`` ... ``-{K-1}.onnx``
    g.safetensors   weights of g (the quality CNN)
    bundle.json     everything else: configs, threshold, the gate (out-of-distribution detector,
                    conformal margin, fitness), provenance, sha256 of both weight files, and the
                    sha256 of bundle.json itself (``manifest_sha256``)
    signature.json  optional: an Ed25519 signature of the manifest (``segqc sign``)

Weights are stored with safetensors (never pickle), so loading a bundle runs no code from it. The
manifest checksum covers every field of ``bundle.json`` and, through the weights' sha256, the whole
bundle; every field that can change a decision is validated (:func:`segqc.model.check_manifest`);
``strict`` state dicts catch weights that do not fit the network described by ``bundle.json``; and a
self-test pushes a fixed image through f and g before the bundle is handed out.

Examples::

    bundle = train_bundle(None, None, PipelineConfig(), "model")     # synthetic data
    bundle = load_bundle("model")
    bundle.threshold, bundle.metadata()["test_metrics"]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from segqc.engine import is_main_process
from segqc.errors import BundleError, SegQCError, UnknownNameError
from segqc.external import EXTERNAL_FILE, ExternalSegmenter, external_files, load_external_segmenter
from segqc.external.predictions import PrecomputedSegmenter
from segqc.external.runner import MEMBER_FILE
from segqc.gate import Gate, gate_summary
from segqc.integrity import SIGNATURE_FILE, seal
from segqc.model import ManifestModel, check_manifest, check_normalisation, read_manifest_json, self_test
from segqc.quality import PREDICTORS, QualityPredictor
from segqc.segmenter import Segmenter
from segqc.types import QualitySamples, SegPrediction
from segqc.uncertainty import METHODS
from segqc.utils import atomic_write, versions, write_json

#: Version of the bundle layout; ``load_bundle`` refuses other versions.
BUNDLE_FORMAT = 2
CONFIG_FILE = "bundle.json"
WEIGHT_FILES = {"segmenter": "f.safetensors", "predictor": "g.safetensors"}
#: Keys ``load_bundle`` needs in ``bundle.json``, as paths into nested objects.
REQUIRED_KEYS: tuple[tuple[str, ...], ...] = (
    ("format",), ("method",), ("predictor",), ("image_size",), ("threshold",), ("gate",),
    ("segmenter",), ("segmenter", "params"), ("segmenter", "mean"), ("segmenter", "std"),
    ("predictor_config",), ("predictor_config", "params"),
    ("sha256",), ("sha256", WEIGHT_FILES["segmenter"]), ("sha256", WEIGHT_FILES["predictor"]),
)  # fmt: skip
#: The same for a bundle whose f is external ONNX models (``segmenter.external`` in ``bundle.json``),
#: and the sha256 of each of their files (:func:`segqc.external.external_files`).
EXTERNAL_REQUIRED_KEYS: tuple[tuple[str, ...], ...] = (
    ("format",), ("method",), ("predictor",), ("image_size",), ("threshold",), ("gate",),
    ("segmenter",), ("segmenter", "params"), ("segmenter", "external"), ("segmenter", "external", "spec"),
    ("predictor_config",), ("predictor_config", "params"),
    ("sha256",), ("sha256", WEIGHT_FILES["predictor"]),
)  # fmt: skip
#: The same for a bundle whose g was trained on precomputed outputs (``segmenter.precomputed``): no f.
PRECOMPUTED_REQUIRED_KEYS: tuple[tuple[str, ...], ...] = (
    ("format",), ("method",), ("predictor",), ("image_size",), ("threshold",), ("gate",),
    ("segmenter",), ("segmenter", "params"), ("segmenter", "precomputed"),
    ("segmenter", "precomputed", "kind"), ("predictor_config",), ("predictor_config", "params"),
    ("sha256",), ("sha256", WEIGHT_FILES["predictor"]),
)  # fmt: skip
#: Files of f of every kind, removed when a bundle of another kind replaces them.
F_FILES = (WEIGHT_FILES["segmenter"], EXTERNAL_FILE, MEMBER_FILE.format("*"))


@dataclass
class Bundle(ManifestModel):
    """A loaded (or freshly trained) bundle.

    Attributes:
        segmenter: fitted f, ready for ``predict``.
        predictor: fitted g (e.g. the ``"uncertainty"`` CNN).
        config: the parsed ``bundle.json``.
        path: the bundle folder.
    """

    segmenter: Segmenter | ExternalSegmenter | PrecomputedSegmenter
    predictor: QualityPredictor
    config: dict[str, Any]
    path: Path
    backend: ClassVar[str] = "torch"

    def segment(self, images: np.ndarray) -> SegPrediction:
        """f on ``(N, S, S, 3)`` uint8 images (:meth:`segqc.runtime.Model.segment`)."""
        return self.segmenter.predict(images)

    def predict_quality(self, samples: QualitySamples) -> np.ndarray:
        """g's predicted Jaccard ``(N,)`` (:meth:`segqc.runtime.Model.predict_quality`)."""
        return self.predictor.predict(samples)

    def metadata(self) -> dict[str, Any]:
        """A JSON-able summary for people and services: no weights, no per-image id lists."""
        data = self.config.get("data") or {}
        summary = {k: v for k, v in data.items() if not k.endswith("_ids")}
        for key, ids in data.items():
            if key.endswith("_ids") and isinstance(ids, list):
                summary.setdefault("n_" + key[: -len("_ids")], len(ids))
        out = {
            "format": self.config.get("format"),
            "method": self.method,
            "method_params": self.config.get("method_params") or {},
            "predictor": self.config["predictor"],
            "image_size": self.image_size,
            "threshold": self.threshold,
            "threshold_rule": self.config.get("threshold_rule"),
            "failure_jaccard": self.config.get("failure_jaccard"),
            "gate": gate_summary(self.config),
            "manifest_sha256": self.manifest_sha256,
            "created": self.config.get("created"),
            "versions": self.config.get("versions"),
            "data": summary,
        }
        if "test_metrics" in self.config:
            out["test_metrics"] = self.config["test_metrics"]
        return json.loads(json.dumps(out, default=str))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_bundle(
    out_dir: str | Path,
    segmenter: Segmenter | ExternalSegmenter | PrecomputedSegmenter,
    predictor: QualityPredictor,
    *,
    image_size: int,
    gate: dict[str, Any],
    threshold: float = 0.7,
    failure_jaccard: float = 0.7,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle folder (created if needed; an existing bundle there is replaced).

    Each file is written to a temporary file and renamed into place; ``bundle.json`` comes last and
    holds the weights' sha256, so a save interrupted half-way fails loudly at load time.

    Args:
        out_dir: the bundle folder.
        segmenter: fitted f: segqc's own (weights saved as ``f.safetensors``) or an external ONNX model
            (copied as ``segmenter.onnx``, its SPEC in ``bundle.json``), or precomputed outputs (no f:
            the bundle then needs them at predict, ``--predictions``).
        predictor: fitted g, of a registered predictor that supports ``state()``.
        image_size: side of the square images f and g were trained on.
        gate: the gate's record (:meth:`segqc.gate.Gate.to_config`), checked before anything is written.
        threshold: refer a segmentation when its predicted Jaccard is below this. Defaults to 0.7.
        failure_jaccard: true Jaccard below which a segmentation is a failure. Defaults to 0.7.
        extra: more ``bundle.json`` keys (``pipeline``, ``data``, ``threshold_rule``, ``test_metrics``,
            ``uncertainty_vmax``, ...). They cannot replace the keys written here.

    Returns:
        The bundle folder.
    """
    out = Path(out_dir)
    if not math.isfinite(threshold) or not 0.0 < threshold < 1.0:
        raise SegQCError(f"threshold must be in (0, 1), got {threshold}")
    try:
        Gate.from_config(gate, threshold)
    except ValueError as err:
        raise SegQCError(f"invalid gate: {err}") from None
    if not is_main_process():  # under torchrun, rank 0 writes
        return out
    g_tensors, g_config = predictor.state()
    blobs = {WEIGHT_FILES["predictor"]: save_tensors(g_tensors, metadata={"format": str(BUNDLE_FORMAT)})}
    if isinstance(segmenter, PrecomputedSegmenter):
        f_config = segmenter.config()
    elif isinstance(segmenter, ExternalSegmenter):
        f_config = segmenter.config()
        blobs.update(segmenter.files())
    else:
        f_tensors, f_config = segmenter.state()
        blobs[WEIGHT_FILES["segmenter"]] = save_tensors(f_tensors, metadata={"format": str(BUNDLE_FORMAT)})
    sums = {}
    for name, blob in blobs.items():
        with atomic_write(out / name) as fh:
            fh.write(blob)
        sums[name] = _sha256(blob)
    for pattern in F_FILES:  # f of a bundle replaced here, of another kind or with more members
        for stale in out.glob(pattern):
            if stale.name not in blobs:
                stale.unlink(missing_ok=True)
    config: dict[str, Any] = {
        "threshold_rule": {"kind": "fixed", "description": f"fixed {threshold:g}"},
        **(extra or {}),
        "format": BUNDLE_FORMAT,
        "method": segmenter.method,
        "method_params": segmenter.method_params or {},
        "predictor": predictor.name,
        "image_size": int(image_size),
        "threshold": float(threshold),
        "failure_jaccard": float(failure_jaccard),
        "gate": gate,
        "segmenter": f_config,
        "predictor_config": g_config,
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sha256": sums,
    }
    write_json(out / CONFIG_FILE, seal(config))
    (out / SIGNATURE_FILE).unlink(missing_ok=True)  # a signature of the replaced bundle no longer holds
    return out


def _is_external(config: dict[str, Any]) -> bool:
    return isinstance(config.get("segmenter"), dict) and "external" in config["segmenter"]


def _is_precomputed(config: dict[str, Any]) -> bool:
    return isinstance(config.get("segmenter"), dict) and "precomputed" in config["segmenter"]


def _missing_key(config: dict[str, Any]) -> str | None:
    keys = REQUIRED_KEYS
    if _is_external(config):
        keys = EXTERNAL_REQUIRED_KEYS
        external = config["segmenter"]["external"]
        with contextlib.suppress(SegQCError):  # a malformed section: load_external_segmenter names it
            files = external_files(external if isinstance(external, dict) else {})
            keys += tuple(("sha256", name) for name in files)
    elif _is_precomputed(config):
        keys = PRECOMPUTED_REQUIRED_KEYS
    for key_path in keys:
        node: Any = config
        for part in key_path:
            if not isinstance(node, dict) or part not in node:
                return ".".join(key_path)
            node = node[part]
    return None


def load_bundle(model_dir: str | Path, *, device: str | None = None, seed: int | None = None) -> Bundle:
    """Load and check a bundle folder written by :func:`save_bundle`.

    Args:
        model_dir: the bundle folder.
        device: where f and g run (``auto``, ``cpu``, ``cuda``). Defaults to ``auto``, whatever
            device the bundle was trained on, so bundles move between machines.
        seed: seed of stochastic read-outs (e.g. ``mcdropout``). Defaults to the training seed.

    Raises:
        BundleError: the folder or a file is missing, ``bundle.json`` is not valid JSON or lacks a
            key (named in the message), the format version is unknown, a weight file's checksum
            does not match, the method or predictor is not registered, or the weights do not fit
            the networks described by the config.
    """
    path = Path(model_dir)
    config_path = path / CONFIG_FILE
    config = read_manifest_json(
        path, CONFIG_FILE, "model bundle", "bundle config", version=BUNDLE_FORMAT, redo="retrain the model"
    )
    missing = _missing_key(config)
    if missing:
        raise BundleError(f"{config_path}: bundle config lacks the key {missing!r}")
    check_manifest(config, config_path)
    for name, registry in ((config["method"], METHODS), (config["predictor"], PREDICTORS)):
        if name not in registry:
            raise BundleError(
                f"{config_path}: unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}"
            )
    segmenter_config = config["segmenter"]
    if not isinstance(segmenter_config, dict) or not isinstance(segmenter_config["params"], dict):
        raise BundleError(f"{config_path}: 'segmenter' and 'segmenter.params' must be JSON objects")
    if segmenter_config["params"].get("method", config["method"]) != config["method"]:
        raise BundleError(f"{config_path}: 'method' and 'segmenter.params.method' disagree")
    if not isinstance(config["sha256"], dict):
        raise BundleError(f"{config_path}: 'sha256' must be a JSON object")
    external, precomputed = _is_external(config), _is_precomputed(config)
    own = not external and not precomputed
    if own:
        check_normalisation(segmenter_config["mean"], segmenter_config["std"], config_path)

    roles = {"predictor": WEIGHT_FILES["predictor"]}
    if own:
        roles["segmenter"] = WEIGHT_FILES["segmenter"]
    tensors = {role: _read_weights(path, name, config["sha256"][name]) for role, name in roles.items()}
    if precomputed:
        segmenter = _precomputed(config, config_path)
    elif external:
        segmenter = load_external_segmenter(path, config, config_path, device=device or "auto")
    else:
        segmenter = _restore(
            lambda: Segmenter.from_state(tensors["segmenter"], config["segmenter"]),
            path / WEIGHT_FILES["segmenter"],
            "segmenter",
        )
    predictor = _restore(
        lambda: PREDICTORS.get(config["predictor"]).from_state(
            tensors["predictor"], config["predictor_config"]
        ),
        path / WEIGHT_FILES["predictor"],
        "predictor_config",
    )
    segmenter.device = predictor.device = device or "auto"  # type: ignore[union-attr]
    bundle = Bundle(segmenter, predictor, config, path)
    self_test(bundle, config_path)
    # The self-test drew from the generator of stochastic read-outs: start it afresh at the seed.
    segmenter.rng_ = np.random.default_rng(segmenter.seed if seed is None else seed)
    return bundle


def _precomputed(config: dict[str, Any], config_path: Path) -> PrecomputedSegmenter:
    section, params = config["segmenter"]["precomputed"], config["segmenter"]["params"]
    kind, seed = section.get("kind") if isinstance(section, dict) else None, params.get("seed", 0)
    params = config.get("method_params") or {}
    if not isinstance(params, dict):
        raise BundleError(f"{config_path}: 'method_params' must be a JSON object")
    try:  # the bundle's method reads the maps out, as it did at training
        return PrecomputedSegmenter(
            None, str(kind), image_size=int(config["image_size"]), seed=int(seed or 0),
            method=str(config["method"]), method_params=params,
        )  # fmt: skip
    except (SegQCError, TypeError, ValueError) as err:
        raise BundleError(f"{config_path}: invalid 'segmenter.precomputed' ({err})") from None


def _read_weights(path: Path, name: str, expected_sha: Any) -> dict[str, Tensor]:
    file = path / name
    if not file.is_file():
        raise BundleError(f"{file}: weight file not found")
    blob = file.read_bytes()
    if _sha256(blob) != expected_sha:
        raise BundleError(
            f"{file}: checksum mismatch (the file differs from the one this bundle was saved with)"
        )
    try:
        tensors = load_tensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise BundleError(f"{file}: cannot read weights ({err})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise BundleError(f"{file}: weight {name!r} holds non-finite values")
    return tensors


def _restore(build: Any, file: Path, section: str) -> Any:
    """Run ``build`` and turn the ways a config and its weights can disagree into ``BundleError``."""
    try:
        return build()
    except KeyError as err:
        if isinstance(err, UnknownNameError):
            raise BundleError(f"{file.parent / CONFIG_FILE}: {err}") from None
        raise BundleError(
            f"{file.parent / CONFIG_FILE}: bundle config lacks the key '{section}.{err.args[0]}'"
        ) from None
    except RuntimeError as err:  # load_state_dict(strict=True): missing, unexpected or mis-shaped tensors
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:4])
        raise BundleError(
            f"{file}: weights do not match the network described by {CONFIG_FILE} ({detail})"
        ) from None
    except (TypeError, ValueError) as err:
        raise BundleError(f"{file.parent / CONFIG_FILE}: invalid '{section}' settings ({err})") from None
