"""Model bundles: a fitted segmenter f and quality predictor g, saved as one folder.

A bundle folder holds::

    f.safetensors   weights of f (the U-Net of the uncertainty method)
    g.safetensors   weights of g (the quality CNN)
    bundle.json     everything else: configs, threshold, provenance, sha256 of both weight files

Weights are stored with safetensors (never pickle), so loading a bundle runs no code from it; the
sha256 sums catch damaged or swapped weight files, and loading with ``strict`` state dicts catches
weights that do not fit the network described by ``bundle.json``.

Examples::

    bundle = train_bundle(None, None, PipelineConfig(), "model")     # synthetic data
    bundle = load_bundle("model")
    bundle.threshold, bundle.metadata()["test_metrics"]
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from segqc.config import PipelineConfig
from segqc.data.dataset import SegData
from segqc.engine import barrier, is_main_process
from segqc.errors import BundleError, SegQCError, UnknownNameError
from segqc.metrics import quality_metrics
from segqc.pipeline import make_predictor, make_segmenter, quality_samples, segmentation_summary
from segqc.quality import PREDICTORS, QualityPredictor
from segqc.segmenter import Segmenter
from segqc.uncertainty import METHODS
from segqc.utils import atomic_write, versions, write_json

#: Version of the bundle layout; ``load_bundle`` refuses other versions.
BUNDLE_FORMAT = 1
CONFIG_FILE = "bundle.json"
WEIGHT_FILES = {"segmenter": "f.safetensors", "predictor": "g.safetensors"}
#: Keys ``load_bundle`` needs in ``bundle.json``, as paths into nested objects.
REQUIRED_KEYS: tuple[tuple[str, ...], ...] = (
    ("format",), ("method",), ("predictor",), ("image_size",), ("threshold",),
    ("segmenter",), ("segmenter", "params"), ("segmenter", "mean"), ("segmenter", "std"),
    ("predictor_config",), ("predictor_config", "params"),
    ("sha256",), ("sha256", WEIGHT_FILES["segmenter"]), ("sha256", WEIGHT_FILES["predictor"]),
)  # fmt: skip
#: Share of the training images held out to choose the threshold for a target failure recall.
CALIBRATION_FRACTION = 0.2


@dataclass
class Bundle:
    """A loaded (or freshly trained) bundle.

    Attributes:
        segmenter: fitted f, ready for ``predict``.
        predictor: fitted g (e.g. the ``"uncertainty"`` CNN).
        config: the parsed ``bundle.json``.
        path: the bundle folder.
    """

    segmenter: Segmenter
    predictor: QualityPredictor
    config: dict[str, Any]
    path: Path

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
    segmenter: Segmenter,
    predictor: QualityPredictor,
    *,
    image_size: int,
    threshold: float = 0.7,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle folder (created if needed; an existing bundle there is replaced).

    Each file is written to a temporary file and renamed into place; ``bundle.json`` comes last and
    holds the weights' sha256, so a save interrupted half-way fails loudly at load time.

    Args:
        out_dir: the bundle folder.
        segmenter: fitted f.
        predictor: fitted g, of a registered predictor that supports ``state()``.
        image_size: side of the square images f and g were trained on.
        threshold: refer a segmentation when its predicted Jaccard is below this. Defaults to 0.7.
        extra: more ``bundle.json`` keys (``pipeline``, ``data``, ``threshold_rule``, ``test_metrics``,
            ``uncertainty_vmax``, ...). They cannot replace the keys written here.

    Returns:
        The bundle folder.
    """
    out = Path(out_dir)
    if not math.isfinite(threshold) or not 0.0 < threshold <= 1.0:
        raise SegQCError(f"threshold must be in (0, 1], got {threshold}")
    if not is_main_process():  # under torchrun, rank 0 writes
        return out
    f_tensors, f_config = segmenter.state()
    g_tensors, g_config = predictor.state()
    sums = {}
    for tensors, name in ((f_tensors, WEIGHT_FILES["segmenter"]), (g_tensors, WEIGHT_FILES["predictor"])):
        blob = save_tensors(tensors, metadata={"format": str(BUNDLE_FORMAT)})
        with atomic_write(out / name) as fh:
            fh.write(blob)
        sums[name] = _sha256(blob)
    config: dict[str, Any] = {
        "threshold_rule": {"kind": "fixed", "description": f"fixed {threshold:g}"},
        **(extra or {}),
        "format": BUNDLE_FORMAT,
        "method": segmenter.method,
        "method_params": segmenter.method_params or {},
        "predictor": predictor.name,
        "image_size": int(image_size),
        "threshold": float(threshold),
        "segmenter": f_config,
        "predictor_config": g_config,
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sha256": sums,
    }
    write_json(out / CONFIG_FILE, config)
    return out


def _missing_key(config: dict[str, Any]) -> str | None:
    for key_path in REQUIRED_KEYS:
        node: Any = config
        for part in key_path:
            if not isinstance(node, dict) or part not in node:
                return ".".join(key_path)
            node = node[part]
    return None


def load_bundle(model_dir: str | Path, *, device: str | None = None) -> Bundle:
    """Load and check a bundle folder written by :func:`save_bundle`.

    Args:
        model_dir: the bundle folder.
        device: where f and g run (``auto``, ``cpu``, ``cuda``). Defaults to ``auto``, whatever
            device the bundle was trained on, so bundles move between machines.

    Raises:
        BundleError: the folder or a file is missing, ``bundle.json`` is not valid JSON or lacks a
            key (named in the message), the format version is unknown, a weight file's checksum
            does not match, the method or predictor is not registered, or the weights do not fit
            the networks described by the config.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise BundleError(f"{path}: model bundle folder not found")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise BundleError(f"{path}: not a model bundle ({CONFIG_FILE} not found)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise BundleError(f"{config_path}: cannot read bundle config ({err})") from None
    if not isinstance(config, dict):
        raise BundleError(f"{config_path}: bundle config must be a JSON object")
    if "format" in config and config["format"] != BUNDLE_FORMAT:
        raise BundleError(
            f"{config_path}: bundle format {config['format']!r} is not supported (this segqc reads format "
            f"{BUNDLE_FORMAT}); retrain the model with this version"
        )
    missing = _missing_key(config)
    if missing:
        raise BundleError(f"{config_path}: bundle config lacks the key {missing!r}")
    for name, registry in ((config["method"], METHODS), (config["predictor"], PREDICTORS)):
        if name not in registry:
            raise BundleError(
                f"{config_path}: unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}"
            )
    if config["segmenter"]["params"].get("method", config["method"]) != config["method"]:
        raise BundleError(f"{config_path}: 'method' and 'segmenter.params.method' disagree")
    threshold, size = config["threshold"], config["image_size"]
    if not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
        raise BundleError(f"{config_path}: threshold must be a number in (0, 1], got {threshold!r}")
    if not isinstance(size, int) or size < 16 or size % 16:
        raise BundleError(f"{config_path}: image_size must be a positive multiple of 16, got {size!r}")

    tensors = {role: _read_weights(path, name, config["sha256"][name]) for role, name in WEIGHT_FILES.items()}
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
    segmenter.device = predictor.device = device or "auto"  # type: ignore[attr-defined]
    return Bundle(segmenter, predictor, config, path)


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
        return load_tensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise BundleError(f"{file}: cannot read weights ({err})") from None


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


# -- training ----------------------------------------------------------------------------------------------


def choose_threshold(
    predicted: np.ndarray, true: np.ndarray, target_recall: float, failure_jaccard: float
) -> dict:
    """The smallest threshold that refers at least ``target_recall`` of the real failures.

    An image is a failure when its true Jaccard is below ``failure_jaccard``; it is referred when its
    predicted Jaccard is below the threshold. The threshold is rounded up to 4 decimals, just above
    the predicted Jaccard of the k-th lowest-scored failure (k = ceil(target_recall * failures)).

    Args:
        predicted: ``(N,)`` predicted Jaccard of held-out images.
        true: ``(N,)`` their true Jaccard.
        target_recall: wanted fraction of failures referred, in (0, 1].
        failure_jaccard: true Jaccard below which a segmentation is a failure (0.7).

    Returns:
        ``threshold``, ``achieved_recall`` and ``referral_rate`` (fraction of the N images referred),
        plus the counts they come from.

    Raises:
        SegQCError: the held-out images contain no failure.
    """
    predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    failures = np.sort(predicted[true < failure_jaccard])
    if failures.size == 0:
        raise SegQCError(
            f"none of the {len(true)} held-out images is a failure (true Jaccard < {failure_jaccard}), so no "
            "threshold can be chosen for a target failure recall; use more (or harder) training data, or "
            "train without --target-failure-recall to use the fixed threshold"
        )
    k = math.ceil(target_recall * failures.size - 1e-9)
    cut = failures[k - 1]
    threshold = (math.floor(cut * 10_000) + 1) / 10_000
    threshold = min(round(threshold, 4), 1.0)
    referred = predicted < threshold
    achieved = float((failures < threshold).mean())
    if achieved < target_recall:  # only when a failure was predicted as a perfect 1.0
        warnings.warn(
            f"target failure recall {target_recall} not reachable; got {achieved:.3f}", stacklevel=2
        )
    return {
        "threshold": threshold,
        "achieved_recall": achieved,
        "referral_rate": float(referred.mean()),
        "n_heldout": int(len(true)),
        "n_heldout_failures": int(failures.size),
        "n_referred": int(referred.sum()),
    }


def _as_splits(
    data: str | Path | SegData | tuple[SegData, SegData] | None,
    protocol: str | Path | None,
    cfg: PipelineConfig,
) -> tuple[SegData, SegData | None, dict[str, Any]]:
    if isinstance(data, SegData):
        return data, None, {"source": "in-memory"}
    if isinstance(data, tuple):
        return data[0], data[1], {"source": "in-memory"}
    from segqc.data.dataset import load_split
    from segqc.data.readers import read_protocol
    from segqc.demo import DEMO_TEST, DEMO_TRAIN, load_data

    if data is not None and protocol is not None and "test" not in read_protocol(protocol):
        # A protocol with only a training list: train on it, no test metrics.
        (train,) = load_split(data, protocol, size=cfg.image_size, splits=("train",))
        return train, None, {"source": str(Path(data).resolve()), "protocol": str(protocol)}
    return load_data(data, protocol, cfg, DEMO_TRAIN, DEMO_TEST)


def train_bundle(
    data: str | Path | SegData | tuple[SegData, SegData] | None,
    protocol: str | Path | None,
    cfg: PipelineConfig,
    out_dir: str | Path,
    *,
    target_failure_recall: float | None = None,
    predictor: str = "uncertainty",
    progress: bool = True,
) -> Bundle:
    """Train f and g and save them as a bundle.

    f is trained on the training images; g (default: the paper's ``"uncertainty"`` CNN) on f's
    predictions over them. The threshold is ``cfg.threshold`` (0.7) unless ``target_failure_recall``
    is given: then a seeded ``CALIBRATION_FRACTION`` (20 %) of the training images is held out of
    the training of both f and g, and the threshold is the smallest one that refers at least that
    fraction of the held-out failures (true Jaccard < ``cfg.threshold``); both models then train on
    the other 80 %, so the held-out predictions are as unseen as a new patient's.
    When a test split exists (a data folder, or the synthetic default), f and g are evaluated on it
    and the metrics are stored in ``bundle.json`` under ``test_metrics``.

    Args:
        data: a data folder (ISIC 2017 or ``images/`` + ``masks/``), ``None`` for the synthetic
            default (320 training, 160 test images), or in-memory ``SegData`` (training only) or a
            ``(train, test)`` pair.
        protocol: JSON file with a ``train`` id list and optionally a ``test`` one; without a
            protocol a data folder is split 80/20 (seeded) and f and g train on the 80 %.
        cfg: settings (image size, widths, epochs, method, seed, device).
        out_dir: the bundle folder to write.
        target_failure_recall: wanted fraction of failures referred, in (0, 1]. Defaults to none
            (fixed threshold).
        predictor: quality predictor name. Defaults to ``"uncertainty"``.
        progress: show progress bars. Defaults to True.

    Raises:
        SegQCError: bad settings or data, or (with a target recall) a held-out set with no failure.
    """
    if target_failure_recall is not None and not 0.0 < target_failure_recall <= 1.0:
        raise SegQCError(f"target failure recall must be in (0, 1], got {target_failure_recall}")
    start = time.perf_counter()
    train, test, info = _as_splits(data, protocol, cfg)
    if test is not None and len(test) == 0:
        test = None
    calibration = None
    if target_failure_recall is not None:
        n_cal = max(1, round(CALIBRATION_FRACTION * len(train)))
        if len(train) - n_cal < 2:
            raise SegQCError(
                f"{len(train)} training images are too few to hold out {n_cal} for the threshold"
            )
        order = np.random.default_rng(cfg.seed).permutation(len(train))
        calibration = train.subset(np.sort(order[:n_cal]))
        train = train.subset(np.sort(order[n_cal:]))

    segmenter = make_segmenter(cfg, progress=progress).fit(train)
    train_samples = quality_samples(train, segmenter.predict(train.images))
    g = make_predictor(predictor, cfg, progress=progress).fit(train_samples)

    extra: dict[str, Any] = {
        "pipeline": cfg.to_dict(),
        "failure_jaccard": cfg.threshold,
        # Heat maps share one colour scale: the largest uncertainty f showed on its training images.
        "uncertainty_vmax": float(train_samples.uncertainty.max()),
        "data": {**info, "n_train": len(train), "train_ids": list(train.ids)},
    }
    threshold = cfg.threshold
    if calibration is not None:
        cal_samples = quality_samples(calibration, segmenter.predict(calibration.images))
        chosen = choose_threshold(
            g.predict(cal_samples), cal_samples.jaccard, target_failure_recall, cfg.threshold
        )
        threshold = chosen["threshold"]
        extra["threshold_rule"] = {
            "kind": "target_failure_recall",
            "target_recall": target_failure_recall,
            "calibration_fraction": CALIBRATION_FRACTION,
            **chosen,
            "description": (
                f"smallest threshold referring >= {target_failure_recall:g} of the failures of "
                f"{chosen['n_heldout']} held-out training images (achieved {chosen['achieved_recall']:.3f}, "
                f"referring {chosen['referral_rate']:.1%} of them)"
            ),
        }
        extra["data"].update(n_calibration=len(calibration), calibration_ids=list(calibration.ids))
    if test is not None:
        extra["test_metrics"] = evaluate(segmenter, g, test, threshold, cfg.threshold)
        extra["data"].update(n_test=len(test), test_ids=list(test.ids))
    extra["timing"] = {"train_s": time.perf_counter() - start}
    out = save_bundle(out_dir, segmenter, g, image_size=cfg.image_size, threshold=threshold, extra=extra)
    barrier()  # under torchrun, rank 0 writes the bundle that every rank then loads
    return load_bundle(out, device=cfg.device)


def evaluate(
    segmenter: Segmenter, predictor: QualityPredictor, test: SegData, threshold: float, failure_jaccard: float
) -> dict[str, Any]:
    """Segmentation, quality-prediction and referral metrics of a bundle's models on labelled images."""
    pred = segmenter.predict(test.images)
    samples = quality_samples(test, pred)
    predicted, true = predictor.predict(samples), samples.jaccard
    referred, failed = predicted < threshold, true < failure_jaccard
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # one-class test sets: NaN metrics, said in JSON as null
        quality = quality_metrics(predicted, true, failure_jaccard)
    return {
        "segmentation": segmentation_summary(pred, test, failure_jaccard),
        "quality": quality,
        "referral": {
            "threshold": threshold,
            "referral_rate": float(referred.mean()),
            "failure_recall": float(referred[failed].mean()) if failed.any() else None,
            "referred_precision": float(failed[referred].mean()) if referred.any() else None,
            "n_failures": int(failed.sum()),
            "n_referred": int(referred.sum()),
        },
    }
