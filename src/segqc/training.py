"""The two-stage pipeline: train f, predict masks and maps, train g on f's outputs, evaluate.

Each step happens in one primitive, which the demo's :func:`run_pipeline`, ``segqc train``'s
:func:`train_bundle` and the experiment's units (:mod:`segqc.experiment.plan`) all call:
:func:`fit_segmenter` (f), :func:`quality_samples` (f's outputs as g's input),
:func:`fit_predictor` (g), :func:`segmentation_summary` and :func:`score_quality` (the metrics;
:func:`evaluate` adds the referral metrics of a bundle).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segqc import __version__
from segqc.bundle import Bundle, load_bundle, save_bundle
from segqc.calibration import check_recall_target, hold_out, referral_threshold
from segqc.checkpoint import PARTIAL, resume_in
from segqc.config import PipelineConfig
from segqc.data.dataset import SegData, data_digest, masks_digest
from segqc.data.splits import DataSource, load_train_test
from segqc.engine import barrier, is_main_process
from segqc.errors import SegQCError
from segqc.external import ExternalOnnxModel, ExternalSegmenter, ExternalSpec
from segqc.external.predictions import PrecomputedSegmenter, PredictionFolder, image_shape
from segqc.gate import DEFAULT_BOUND_CONFIDENCE, fit_gate
from segqc.metrics import dice, jaccard, quality_metrics
from segqc.ood import DEFAULT_ALPHA
from segqc.quality import QualityPredictor, create_predictor
from segqc.segmenter import Segmenter
from segqc.types import QualitySamples, SegPrediction
from segqc.utils import versions

#: What g learns from in :func:`train_bundle`: f's predictions over its own training images (the
#: paper's way) or out-of-fold predictions.
QUALITY_TRAIN = ("paper", "crossfit")


def make_segmenter(cfg: PipelineConfig, *, progress: bool = True) -> Segmenter:
    return Segmenter(
        cfg.method,
        method_params=cfg.method_params,
        base_width=cfg.base_width,
        dropout=cfg.dropout,
        epochs=cfg.seg_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        lr_schedule=cfg.seg_lr_schedule,
        seed=cfg.seed,
        device=cfg.device,
        progress=progress,
    )


def make_predictor(name: str, cfg: PipelineConfig, *, progress: bool = True) -> QualityPredictor:
    params: dict[str, Any] = {
        "base_width": cfg.quality_width,
        "epochs": cfg.quality_epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "device": cfg.device,
        "progress": progress,
    }
    cls_params = set(create_predictor(name).get_params())
    params = {k: v for k, v in params.items() if k in cls_params}
    params.update(cfg.predictor_params.get(name, {}))
    return create_predictor(name, **params)


def external_segmenter(
    model: str | Path | Sequence[str | Path], spec: str | Path | ExternalSpec | None, cfg: PipelineConfig
) -> ExternalSegmenter:
    """f as an external ONNX model, or an ensemble of K >= 2 of them (already trained): fed
    ``cfg.image_size`` images as ``spec`` (a SPEC.json file, a parsed spec, or None for the defaults)
    says, each checked as it loads, read out by ``cfg.method``.

    Raises:
        SegQCError: a file cannot be read or run, does not fit the SPEC, or the method reads out another
            number of external models (``UncertaintyMethod.external_models``).
    """
    files = [Path(model)] if isinstance(model, (str, Path)) else [Path(m) for m in model]
    parsed = spec if isinstance(spec, ExternalSpec) else ExternalSpec.load(spec)
    models = []
    for file in files:
        try:
            blob = file.read_bytes()
        except OSError as err:
            raise SegQCError(f"{file}: cannot read the segmentation model ({err.strerror or err})") from None
        models.append(ExternalOnnxModel(blob, parsed, cfg.image_size, source=str(file), device=cfg.device))
    return ExternalSegmenter(
        models, cfg.method, method_params=cfg.method_params, seed=cfg.seed, source=[f.name for f in files]
    )


def precomputed_segmenter(
    folder: PredictionFolder, data: DataSource, cfg: PipelineConfig
) -> PrecomputedSegmenter:
    """f as precomputed outputs in ``folder``, looked up by image id; each map is checked against the
    size of its image file when ``data`` is a data folder. ``cfg.method`` (with ``cfg.method_params``)
    reads them out and must fit the folder's kind (:func:`segqc.external.predictions.map_methods`)."""
    shape_of = None
    if isinstance(data, (str, Path)):
        from segqc.data.readers import find_pairs

        pairs = find_pairs(data)
        folder.expect(pairs)

        def shape_of(id_: str) -> tuple[int, int] | None:
            pair = pairs.get(id_)
            return None if pair is None else image_shape(pair.image)

    elif isinstance(data, SegData):
        folder.expect(data.ids)
    elif isinstance(data, tuple):
        folder.expect([i for part in data for i in part.ids])

    return PrecomputedSegmenter(folder, folder.folder_kind(), image_size=cfg.image_size, shape_of=shape_of,
                                seed=cfg.seed, method=cfg.method,
                                method_params=cfg.method_params)  # fmt: skip


def fit_segmenter(cfg: PipelineConfig, data: SegData, *, progress: bool = True) -> Segmenter:
    """Train f on ``data``: the one place f is trained (pipeline, bundle and experiment)."""
    return make_segmenter(cfg, progress=progress).fit(data)


def quality_samples(data: SegData, pred: SegPrediction, *, labelled: bool = True) -> QualitySamples:
    """Pair f's masks and maps with the images; ``labelled`` adds the ground truth and each mask's true
    Jaccard index (what g learns from); without it nothing of the ground truth reaches g."""
    if not labelled:
        return QualitySamples(data.images, pred.mask, pred.uncertainty)
    return QualitySamples(
        images=data.images,
        masks=pred.mask,
        uncertainty=pred.uncertainty,
        jaccard=jaccard(pred.mask, data.masks),
        true_masks=data.masks,
        ids=list(data.ids),
    )


def fit_predictor(
    name: str, cfg: PipelineConfig, samples: QualitySamples, *, progress: bool = True
) -> QualityPredictor:
    """Train the quality predictor g ``name`` on labelled samples: the one place g is trained."""
    return make_predictor(name, cfg, progress=progress).fit(samples)


def segmentation_summary(mask: np.ndarray, data: SegData, threshold: float) -> dict[str, float]:
    """Mean and median Jaccard, mean Dice and failure rate (Jaccard < ``threshold``) of f's masks."""
    j = jaccard(mask, data.masks)
    return {
        "jaccard_mean": float(j.mean()),
        "jaccard_median": float(np.median(j)),
        "dice_mean": float(dice(mask, data.masks).mean()),
        "failure_rate": float((j < threshold).mean()),
        "n_images": int(len(j)),
    }


def score_quality(predicted: np.ndarray, true: np.ndarray, threshold: float) -> dict[str, float]:
    """Quality-prediction metrics of g; a one-class test set gives NaN (said in JSON as null)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the NaN is reported in the results instead
        return quality_metrics(predicted, true, threshold)


def row_name(method: str, predictor: QualityPredictor) -> str:
    """Rows are named by the uncertainty method when g reads its map, else by the baseline."""
    return method if predictor.uses_uncertainty else predictor.name


@dataclass
class PipelineResult:
    """Everything one run produced: the JSON-able results and the fitted pieces."""

    results: dict[str, Any]
    segmenter: Segmenter
    predictors: dict[str, QualityPredictor]
    test_prediction: SegPrediction
    predicted_quality: dict[str, np.ndarray] = field(default_factory=dict)


def run_pipeline(
    train: SegData,
    test: SegData,
    cfg: PipelineConfig,
    *,
    data_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> PipelineResult:
    """Train f on ``train``, train each quality predictor on f's outputs over ``train`` (as in the
    paper), and evaluate every predictor on ``test``.

    Returns the results (schema of ``results.json``) and the fitted models.
    """
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    seg = fit_segmenter(cfg, train, progress=progress)
    timing["train_segmentation_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_pred, test_pred = seg.predict(train.images), seg.predict(test.images)
    timing["predict_segmentation_s"] = time.perf_counter() - t0
    train_samples, test_samples = quality_samples(train, train_pred), quality_samples(test, test_pred)
    true_j = test_samples.jaccard

    rows, predictors, predicted = [], {}, {}
    for name in cfg.predictors:
        t0 = time.perf_counter()
        predictor = fit_predictor(name, cfg, train_samples, progress=progress)
        q = predictor.predict(test_samples)
        timing[f"quality_{name}_s"] = time.perf_counter() - t0
        label = row_name(cfg.method, predictor)
        predictors[label], predicted[label] = predictor, q
        rows.append({"method": label, "predictor": name, "metrics": score_quality(q, true_j, cfg.threshold)})

    first = rows[0]["method"] if rows else None
    per_image = [
        {
            "id": id_,
            "true_jaccard": float(t),
            **({"predicted_jaccard": float(predicted[first][i])} if first else {}),
            **(
                {"predicted_by_method": {k: float(v[i]) for k, v in predicted.items()}}
                if len(predicted) > 1
                else {}
            ),
        }
        for i, (id_, t) in enumerate(zip(test.ids, true_j))
    ]
    results = {
        "config": cfg.to_dict(),
        "versions": versions(),
        "data": {**(data_info or {}), "train_ids": list(train.ids), "test_ids": list(test.ids)},
        "segmentation": {
            **segmentation_summary(test_pred.mask, test, cfg.threshold),
            "train_jaccard_mean": float(train_samples.jaccard.mean()),
        },
        "rows": rows,
        "per_image": per_image,
        "timing": timing,
    }
    return PipelineResult(results, seg, predictors, test_pred, predicted)


def train_bundle(
    data: DataSource,
    protocol: str | Path | None,
    cfg: PipelineConfig,
    out_dir: str | Path,
    *,
    target_failure_recall: float | None = None,
    confidence: float | None = None,
    bound_confidence: float = DEFAULT_BOUND_CONFIDENCE,
    ood_alpha: float = DEFAULT_ALPHA,
    force: bool = False,
    predictor: str = "uncertainty",
    segmenter: Segmenter | ExternalSegmenter | PrecomputedSegmenter | None = None,
    quality_train: str = "paper",
    folds: int = 3,
    progress: bool = True,
) -> Bundle:
    """Train f and g, learn the gate, check the model is fit for its job, and save it as a bundle.

    A seeded ``CALIBRATION_FRACTION`` (20 %) of the training images is held out of the training of
    both f and g, so that its predictions are as unseen as a new patient's. f trains on the rest, g on
    f's predictions over them. On the held-out images segqc then sets

    - the threshold: ``cfg.threshold`` (0.7) by default; with ``target_failure_recall`` R the smallest
      threshold referring at least R of the held-out failures (true Jaccard < ``cfg.threshold``); with
      ``confidence`` C as well, the smallest whose recall is >= R with probability >= C
      (:func:`segqc.calibration.guaranteed_threshold`);
    - the gate (:func:`segqc.gate.fit_gate`): the out-of-distribution limit, the conformal margin of
      the per-image lower bound, and the fitness check.

    A model that fails its fitness check (g constant, or no held-out failure referred) is not written
    unless ``force``; then it is marked unfit and ``predict``/``serve`` warn about it.
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
        confidence: with ``target_failure_recall``, the probability with which the recall must hold.
        bound_confidence: confidence of the per-image lower bound of the Jaccard. Defaults to 0.9.
        ood_alpha: share of in-distribution images the out-of-distribution limit may refer. Defaults
            to 0.01.
        force: write a model that fails its fitness check (marked unfit). Defaults to False.
        predictor: quality predictor name. Defaults to ``"uncertainty"``.
        segmenter: an already fitted f (e.g. :func:`external_segmenter`, a model from outside segqc, or
            a :class:`~segqc.external.predictions.PrecomputedSegmenter` of its outputs, looked up by
            image id): kept fixed, only g and the gate are trained; its ``method`` must be ``cfg.method``.
            Defaults to training segqc's own f.
        quality_train: what g learns from: ``"paper"``, f's predictions over its own training images
            (the paper's way), or ``"crossfit"``, out-of-fold predictions: ``folds`` more f's, each
            trained on the other folds, predict the images of their fold, so that g learns from the
            failures f makes on images it has not seen (the better f fits its training images, the
            fewer failures g sees the paper's way); the bundle's f is trained on all the images as
            before. Defaults to ``"paper"``.
        folds: folds of the cross-fitting. Defaults to 3.
        progress: show progress bars. Defaults to True.

    Raises:
        SegQCError: bad settings or data, a held-out set with too few failures for the asked threshold
            rule, or (without ``force``) a model that fails its fitness check.
    """
    check_recall_target(target_failure_recall, confidence)
    if segmenter is not None and segmenter.method != cfg.method:
        raise SegQCError(
            f"the given segmenter is read out by {segmenter.method!r}, the settings say {cfg.method!r}"
        )
    if quality_train not in QUALITY_TRAIN:
        raise SegQCError(f"quality_train must be one of {', '.join(QUALITY_TRAIN)}, got {quality_train!r}")
    if quality_train == "crossfit" and segmenter is not None:
        raise SegQCError(
            "cross-fitting retrains f on folds of the training images; a given segmentation model is "
            "not trained here, so g learns from its outputs as they are (leave out --quality-train crossfit)"
        )
    start = time.perf_counter()
    train, test, info = load_train_test(data, protocol, size=cfg.image_size, seed=cfg.seed)
    if test is not None and len(test) == 0:
        test = None
    train, calibration = hold_out(train, cfg.seed)

    # The trainings save their progress in OUT/.partial after every epoch: a rerun of the same command
    # resumes them (segqc.checkpoint), and once the bundle is written the folder goes.
    partial = Path(out_dir) / PARTIAL
    scratch = partial if is_main_process() else None
    f_key = {
        "segqc": __version__,  # another release may train otherwise with the same settings
        "f": cfg.training_settings("f"),  # g's settings do not change f: a rerun with others keeps it
        "method": [cfg.method, cfg.method_params],
        "seed": cfg.seed,
        "train": data_digest(train),
    }
    if quality_train == "crossfit":  # checked before any training
        # the count the user sees is not the count given: say where the held-out images went
        aside = f"the {len(calibration)} held out for the gate"
        if test is not None:
            aside = f"the {len(test)} test images and {aside}"
        parts = crossfit_folds(len(train), folds, cfg.seed, set_aside=f" ({aside} set aside)")
    carried = 0.0  # seconds the trainings resumed here had run in earlier, stopped runs
    if segmenter is None:
        with resume_in(scratch and scratch / "f", key=f_key) as block:
            segmenter = fit_segmenter(cfg, train, progress=progress)
        carried += block.carried_seconds if block else 0.0
    if quality_train == "crossfit":
        train_pred, folds_carried = out_of_fold_predictions(
            cfg, train, parts, scratch, f_key, progress=progress
        )
        carried += folds_carried
    else:
        train_pred = segment(segmenter, train)
    train_samples = quality_samples(train, train_pred)
    # g learns from f's outputs, which the settings do not pin (a given f, or f trained with another
    # thread count): keyed by those outputs, g never resumes a training on another f's.
    g_key = {**f_key, "pipeline": cfg.to_dict(), "predictor": predictor}
    g_key["f_outputs"] = f_outputs_digest(train_samples)
    with resume_in(scratch and scratch / "g", key=g_key) as block:
        g = fit_predictor(predictor, cfg, train_samples, progress=progress)
    carried += block.carried_seconds if block else 0.0
    cal_samples = quality_samples(calibration, segment(segmenter, calibration))
    cal_predicted = g.predict(cal_samples)

    extra: dict[str, Any] = {
        "pipeline": cfg.to_dict(),
        "quality_train": {"kind": quality_train, **({"folds": folds} if quality_train == "crossfit" else {})},
        # Heat maps share one colour scale: the largest uncertainty in g's training maps (f's on its
        # training images, or the folds' f's on the images they did not train on, when cross-fitted).
        # None when f showed none (e.g. an ensemble whose members agreed everywhere): no scale of width 0.
        "uncertainty_vmax": float(train_samples.uncertainty.max()) or None,
        "data": {
            **info,
            "n_train": len(train),
            "train_ids": list(train.ids),
            "n_calibration": len(calibration),
            "calibration_ids": list(calibration.ids),
            # the truth the threshold was chosen on, checked when it is chosen again (segqc.recalibrate)
            "calibration_masks_sha256": masks_digest(calibration),
        },
    }
    threshold, rule = referral_threshold(
        cal_predicted, cal_samples.jaccard, cfg.threshold, target_failure_recall, confidence
    )
    if rule is not None:
        extra["threshold_rule"] = rule
    gate = fit_gate(
        train_samples, cal_samples, cal_predicted, threshold, cfg.threshold,
        bound_confidence=bound_confidence, ood_alpha=ood_alpha,
    )  # fmt: skip
    if not gate.fit:
        if not force:
            raise SegQCError(
                f"the model is not fit to gate segmentations ({'; '.join(gate.fitness['problems'])}); "
                "no model was written. Train longer or on more data, or pass --force to write it marked "
                f"unfit (the same command with --force reuses the finished trainings kept in {partial})"
            )
        gate.fitness["forced"] = True
    if test is not None:
        extra["test_metrics"] = evaluate(segmenter, g, test, threshold, cfg.threshold)
        extra["data"].update(n_test=len(test), test_ids=list(test.ids))
    # train_s: this run's wall time; compute_s: the whole work's, with a stopped run's trainings
    train_s = time.perf_counter() - start
    extra["timing"] = {"train_s": train_s, "compute_s": train_s + carried}
    out = save_bundle(
        out_dir,
        segmenter,
        g,
        image_size=cfg.image_size,
        gate=gate.to_config(),
        threshold=threshold,
        failure_jaccard=cfg.threshold,  # the failures the gate and test metrics were counted with
        extra=extra,
    )
    if is_main_process():
        drop_progress(partial)
    barrier()  # under torchrun, rank 0 writes the bundle that every rank then loads
    return load_bundle(out, device=cfg.device)


def drop_progress(partial: Path) -> None:
    """Remove the trainings' progress that :func:`train_bundle` kept in ``partial``: only the folders it
    makes (``f``, ``g``, ``foldKofN``), and ``partial`` itself once empty, never anything else there."""
    folds = [p for p in partial.glob("fold*of*") if re.fullmatch(r"fold\d+of\d+", p.name)]
    for folder in [partial / "f", partial / "g", *folds]:
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # absent, or holds someone else's files
        partial.rmdir()


def crossfit_folds(n: int, folds: int, seed: int, *, set_aside: str = "") -> list[np.ndarray]:
    """``folds`` disjoint, sorted index sets covering ``range(n)``, drawn with ``seed``.

    Raises:
        SegQCError: ``folds`` is not a whole number of at least 2, or leaves an empty fold or fewer
            than 2 images to train each fold's f on (``set_aside`` is added to that message).
    """
    # np.array_split would take 2.5 as 2 folds while the bundle records 2.5
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)):
        raise SegQCError(f"folds must be a whole number, got {folds!r}")
    if folds < 2:
        raise SegQCError(f"folds must be at least 2, got {folds}")
    order = np.random.default_rng(seed).permutation(n)
    parts = [np.sort(part) for part in np.array_split(order, folds)]
    # more folds than images leaves empty folds (an f trained on every image, for nothing)
    if folds > n or min(n - len(part) for part in parts) < 2:
        raise SegQCError(
            f"{folds} folds of {n} training images{set_aside} leave too few to train f on the other folds; "
            "use fewer folds"
        )
    return parts


def out_of_fold_predictions(
    cfg: PipelineConfig,
    train: SegData,
    parts: list[np.ndarray],
    scratch: Path | None,
    f_key: dict[str, Any],
    *,
    progress: bool = True,
) -> tuple[SegPrediction, float]:
    """f's masks and maps on every training image from an f that did not train on it: for each fold,
    an f trained on the other folds predicts the fold (each training resumable under ``scratch``).
    Also returns the seconds the folds' resumed trainings had run in earlier, stopped runs."""
    n = len(train)
    mask = np.zeros(train.masks.shape, np.uint8)
    uncertainty = np.zeros(train.masks.shape, np.float32)
    carried = 0.0
    for k, index in enumerate(parts):
        rest = np.setdiff1d(np.arange(n), index)
        fold_key = {**f_key, "fold": [k, len(parts)]}
        with resume_in(scratch and scratch / f"fold{k + 1}of{len(parts)}", key=fold_key) as block:
            fold_f = fit_segmenter(cfg, train.subset(rest), progress=progress)
        carried += block.carried_seconds if block else 0.0
        pred = fold_f.predict(train.images[index])
        mask[index], uncertainty[index] = pred.mask, pred.uncertainty
    return SegPrediction(mask.astype(np.float32), mask, uncertainty), carried


def f_outputs_digest(samples: QualitySamples) -> str:
    """Hash of f's outputs in quality samples (masks, uncertainty maps, Jaccard): what g trains on
    beyond the images, which :func:`~segqc.data.dataset.data_digest` covers."""
    h = hashlib.sha256()
    for a in (samples.masks, samples.uncertainty, samples.jaccard):
        h.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def segment(segmenter: Segmenter | ExternalSegmenter | PrecomputedSegmenter, data: SegData) -> SegPrediction:
    """f's outputs on ``data``: run on its images, or (precomputed outputs) looked up by its ids."""
    if isinstance(segmenter, PrecomputedSegmenter):
        return segmenter.predict_data(data)
    pred = segmenter.predict(data.images)
    if getattr(segmenter, "external", False):
        # An external model's NaN (or out-of-range probabilities) on a training image would reach g's
        # training and its calibration: refused here, naming the images.
        bad = ~np.isfinite(np.asarray(pred.uncertainty).reshape(len(data.images), -1)).all(axis=1)
        bad |= ~np.isfinite(np.asarray(pred.probs).reshape(len(data.images), -1)).all(axis=1)
        if bad.any():
            ids = [str(data.ids[i]) for i in np.flatnonzero(bad)]
            named = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
            raise SegQCError(
                f"the segmentation model's output is not finite (or not probabilities in [0, 1]) on "
                f"{len(ids)} of {len(data.images)} images ({named}): g cannot learn its quality from these"
            )
    return pred


def evaluate(
    segmenter: Segmenter | ExternalSegmenter | PrecomputedSegmenter,
    predictor: QualityPredictor,
    test: SegData,
    threshold: float,
    failure_jaccard: float,
) -> dict[str, Any]:
    """Segmentation, quality-prediction and referral metrics of a bundle's models on labelled images."""
    pred = segment(segmenter, test)
    samples = quality_samples(test, pred)
    predicted, true = predictor.predict(samples), samples.jaccard
    referred, failed = predicted < threshold, true < failure_jaccard
    return {
        "segmentation": segmentation_summary(pred.mask, test, failure_jaccard),
        "quality": score_quality(predicted, true, failure_jaccard),
        "referral": {
            "threshold": threshold,
            "referral_rate": float(referred.mean()),
            "failure_recall": float(referred[failed].mean()) if failed.any() else None,
            "referred_precision": float(failed[referred].mean()) if referred.any() else None,
            "n_failures": int(failed.sum()),
            "n_referred": int(referred.sum()),
        },
    }
