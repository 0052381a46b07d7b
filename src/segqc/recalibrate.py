"""Choose a trained model's referral threshold again, without training: another operating point.

A bundle refers an image when g's predicted Jaccard is below its threshold, chosen at training on the
20% of the training images held out of f's and g's training (:func:`segqc.training.train_bundle`).
Neither f, g, the out-of-distribution limit nor the conformal margin depends on that threshold, so
another one (e.g. one that refers at least 90% of the failures) needs only g's predictions on the
same held-out images: :func:`recalibrate_bundle` recomputes them from the training data, chooses the
threshold by the same rule ``segqc train --target-failure-recall`` uses, assesses the gate's fitness
again and writes a new bundle with the same f and g. The result is the bundle that training with
that target would have written (up to float rounding on another device).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from segqc.bundle import Bundle, load_bundle, save_bundle
from segqc.calibration import check_recall_target, hold_out, referral_threshold
from segqc.data.dataset import SegData, masks_digest
from segqc.data.splits import DataSource, load_train_test
from segqc.errors import BundleError, SegQCError
from segqc.external.predictions import PrecomputedSegmenter
from segqc.integrity import verify_signature
from segqc.training import evaluate, quality_samples, segment

#: ``bundle.json`` keys that :func:`segqc.bundle.save_bundle` writes itself (not carried over).
_WRITTEN_BY_SAVE = {
    "format", "method", "method_params", "predictor", "image_size", "threshold", "failure_jaccard",
    "gate", "segmenter", "predictor_config", "versions", "created", "sha256", "manifest_sha256",
}  # fmt: skip


def recalibrate_bundle(
    model_dir: str | Path,
    data: DataSource,
    protocol: str | Path | None,
    out_dir: str | Path,
    *,
    target_failure_recall: float | None,
    confidence: float | None = None,
    force: bool = False,
    device: str | None = None,
    trusted_key: str | Path | None = None,
) -> Bundle:
    """Write ``model_dir``'s f and g to ``out_dir`` with a referral threshold chosen again.

    Args:
        model_dir: a bundle folder written by ``segqc train`` (not changed).
        data: the data it was trained on, as given to ``segqc train`` (its held-out images are found
            again by the training seed and checked against the ids the bundle recorded).
        protocol: the protocol file it was trained with, if any.
        out_dir: the new bundle folder: a new or empty one, not ``model_dir`` nor inside it. It is
            written whole beside it and renamed into place, so an interrupted run leaves none.
        target_failure_recall: wanted fraction of held-out failures referred, in (0, 1]; None goes
            back to the fixed threshold (the failure Jaccard, 0.7).
        confidence: with a target, the probability with which the recall must hold.
        force: write a model that fails its fitness check (marked unfit).
        device: where to run f and g. Defaults to the model's own choice.
        trusted_key: an Ed25519 public key (PEM): the model must carry a valid signature by it
            (``segqc sign``), checked before it is read, as ``segqc predict --trusted-key`` does. The new
            bundle is not signed (``segqc sign`` it). Defaults to none (no signature needed).

    Raises:
        SegQCError: a bad target, ``out_dir`` being (in) the model's folder or not empty, a model whose
            f is precomputed outputs, a failure Jaccard other than the one training counted failures
            with, data whose held-out images are not the model's, too few held-out failures for the
            rule, or (without ``force``) a model unfit at the new threshold.
    """
    check_recall_target(target_failure_recall, confidence)
    source, out = Path(model_dir), Path(out_dir)
    _check_out(source, out)
    start = time.perf_counter()
    signed = verify_signature(source, trusted_key) if trusted_key is not None else None
    bundle = load_bundle(source, device=device)
    if signed is not None and bundle.manifest_sha256 != signed:  # the folder changed while it was read
        raise BundleError(f"{source}: the manifest changed after its signature was checked; refusing it")
    if isinstance(bundle.segmenter, PrecomputedSegmenter):
        raise SegQCError(
            "this model's f is precomputed outputs (trained with --predictions): its held-out images' "
            "outputs are not at hand, so its threshold cannot be chosen again; train it again with "
            "--target-failure-recall"
        )
    config = bundle.config
    calibration, test, info = _heldout_images(bundle, source, data, protocol)
    failure = float(config["failure_jaccard"])
    pipeline = config.get("pipeline") or {}
    if pipeline.get("threshold", failure) != failure:  # written before train recorded its own
        raise SegQCError(
            f"{source}: bundle.json's failure_jaccard {failure:g} is not the {pipeline['threshold']!r} the "
            "model was trained to count failures with: train it again with --target-failure-recall"
        )
    samples = quality_samples(calibration, segment(bundle.segmenter, calibration))
    predicted = bundle.predictor.predict(samples)
    threshold, rule = referral_threshold(
        predicted, samples.jaccard, failure, target_failure_recall, confidence
    )
    gate = bundle.gate.with_threshold(threshold, predicted, samples.jaccard, failure)
    if not gate.fit:
        if not force:
            raise SegQCError(
                f"at threshold {threshold:g} the model is not fit to gate segmentations "
                f"({'; '.join(gate.fitness['problems'])}); no model was written "
                "(--force writes it marked unfit)"
            )
        gate.fitness["forced"] = True
    extra: dict[str, Any] = {k: v for k, v in config.items() if k not in _WRITTEN_BY_SAVE}
    extra.pop("threshold_rule", None)  # the source's; without a rule save_bundle writes the fixed one
    if rule is not None:
        extra["threshold_rule"] = rule
    extra.pop("test_metrics", None)  # its referral numbers were the old threshold's
    if test is not None and len(test) and list(test.ids) == config["data"].get("test_ids"):
        extra["test_metrics"] = evaluate(bundle.segmenter, bundle.predictor, test, threshold, failure)
    extra["recalibrated"] = {
        "from_manifest_sha256": bundle.manifest_sha256,
        "previous_threshold": bundle.threshold,
        "signature_verified": signed is not None,
        "data": info,
        "seconds": time.perf_counter() - start,
    }
    # written whole beside OUT and renamed into place: an interrupted run leaves no half-written OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        # a plain folder inside mkdtemp's 0700 one, so that the bundle moved in has the usual permissions
        staging = scratch / out.name
        save_bundle(
            staging, bundle.segmenter, bundle.predictor, image_size=bundle.image_size,
            gate=gate.to_config(), threshold=threshold, failure_jaccard=failure, extra=extra,
        )  # fmt: skip
        try:
            os.rename(staging, out)  # onto nothing or an empty folder only
        except OSError as err:
            raise SegQCError(f"cannot write --out {out_dir} ({err.strerror}); nothing was replaced") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return load_bundle(out, device=device)


def _check_out(source: Path, out: Path) -> None:
    """Refuse an ``out`` that is the model's folder or inside it, or that holds anything."""
    if source.exists() and source.resolve() in (out.resolve(), *out.resolve().parents):
        raise SegQCError(
            f"--out must be another folder than the model ({source}), and not inside it: the model "
            "stays as it is"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SegQCError(
            f"--out {out} exists and is not an empty folder: give a new one (nothing is replaced)"
        )


def _heldout_images(
    bundle: Bundle, source: Path, data: DataSource, protocol: str | Path | None
) -> tuple[SegData, SegData | None, dict[str, Any]]:
    """The model's held-out images found again in ``data`` by its training seed, checked against the
    ids (and the masks' hash, when recorded) in its ``bundle.json``; with the test split and the
    data's description."""
    pipeline, recorded = bundle.config.get("pipeline") or {}, bundle.config.get("data")
    recorded = recorded if isinstance(recorded, dict) else {}  # a bundle.json rewritten by hand
    seed = pipeline.get("seed", 0)
    expected = recorded.get("calibration_ids")
    ids_ok = isinstance(expected, list) and all(isinstance(i, str) for i in expected)
    if not isinstance(seed, int) or isinstance(seed, bool) or not ids_ok:
        raise SegQCError(f"{source}: bundle.json does not record its training seed and held-out image ids")
    train, test, info = load_train_test(data, protocol, size=bundle.image_size, seed=seed)
    _, calibration = hold_out(train, seed)
    if list(calibration.ids) != expected:
        missing = len(set(expected) - set(calibration.ids))
        raise SegQCError(
            f"the held-out images of this data are not the model's ({missing} of its {len(expected)} "
            f"held-out ids are missing, or the training split differs): give the --data and --protocol "
            f"it was trained with (it records {recorded.get('source')!r}, {recorded.get('protocol')!r})"
        )
    digest = recorded.get("calibration_masks_sha256")  # absent in bundles written before it was kept
    if digest is not None and digest != masks_digest(calibration):
        raise SegQCError(
            "the masks of the model's held-out images differ from those it was trained with: its "
            "threshold can only be chosen again on the same truth"
        )
    return calibration, test, info
