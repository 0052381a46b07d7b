"""The two-stage pipeline: train f, predict masks and maps, train g on f's outputs, evaluate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segqc.config import PipelineConfig
from segqc.data.dataset import SegData
from segqc.metrics import dice, jaccard, quality_metrics
from segqc.quality import QualityPredictor, create_predictor
from segqc.segmenter import Segmenter
from segqc.types import QualitySamples, SegPrediction
from segqc.utils import versions


def make_segmenter(cfg: PipelineConfig, *, progress: bool = True) -> Segmenter:
    return Segmenter(
        cfg.method,
        method_params=cfg.method_params,
        base_width=cfg.base_width,
        dropout=cfg.dropout,
        epochs=cfg.seg_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
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


def quality_samples(data: SegData, pred: SegPrediction) -> QualitySamples:
    """Pair f's outputs with the images, and label each with its true Jaccard index."""
    return QualitySamples(
        images=data.images,
        masks=pred.mask,
        uncertainty=pred.uncertainty,
        jaccard=jaccard(pred.mask, data.masks),
        true_masks=data.masks,
        ids=list(data.ids),
    )


def segmentation_summary(pred: SegPrediction, data: SegData, threshold: float) -> dict[str, float]:
    j = jaccard(pred.mask, data.masks)
    return {
        "jaccard_mean": float(j.mean()),
        "jaccard_median": float(np.median(j)),
        "dice_mean": float(dice(pred.mask, data.masks).mean()),
        "failure_rate": float((j < threshold).mean()),
        "n_images": int(len(j)),
    }


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
    seg = make_segmenter(cfg, progress=progress).fit(train)
    timing["train_segmentation_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_pred, test_pred = seg.predict(train.images), seg.predict(test.images)
    timing["predict_segmentation_s"] = time.perf_counter() - t0
    train_samples, test_samples = quality_samples(train, train_pred), quality_samples(test, test_pred)
    true_j = test_samples.jaccard

    rows, predictors, predicted = [], {}, {}
    for name in cfg.predictors:
        t0 = time.perf_counter()
        predictor = make_predictor(name, cfg, progress=progress).fit(train_samples)
        q = predictor.predict(test_samples)
        timing[f"quality_{name}_s"] = time.perf_counter() - t0
        label = row_name(cfg.method, predictor)
        predictors[label], predicted[label] = predictor, q
        rows.append(
            {"method": label, "predictor": name, "metrics": quality_metrics(q, true_j, cfg.threshold)}
        )

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
            **segmentation_summary(test_pred, test, cfg.threshold),
            "train_jaccard_mean": float(train_samples.jaccard.mean()),
        },
        "rows": rows,
        "per_image": per_image,
        "timing": timing,
    }
    return PipelineResult(results, seg, predictors, test_pred, predicted)
