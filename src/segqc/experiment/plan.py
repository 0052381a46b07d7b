"""The planner of an experiment: its rows, and per seed the units that produce them (f, pred, g).

- ``f-<training key>-s<seed>-<full|foldKofN>``: trained weights (``weights.safetensors``);
- ``pred-<method>-s<seed>-<full-train|full-test|foldKofN>``: masks (uint8) and uncertainty maps
  (float16; probabilities are not kept) on a set of images (``arrays.npz``);
- ``g-<row>-s<seed>``: g's predicted Jaccard of every test image (``arrays.npz``).

A unit's key holds everything that determines it: the relevant settings, the data's ids and pixels,
the method's and predictor's parameters, the seed, the segqc version, and the hashes of the units it
reads. The device is not part of the key, nor is ``threshold`` (it only enters the metrics, computed
at the end). Every unit re-seeds everything it uses, so a resumed run gives the same numbers as an
uninterrupted one. Training and prediction are :mod:`segqc.training`'s primitives.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segqc import __version__
from segqc.data.dataset import SegData, data_digest
from segqc.experiment.config import CROSSFIT_SUFFIX, ExperimentConfig, training_key
from segqc.experiment.units import Payload, Unit
from segqc.quality import PREDICTORS
from segqc.segmenter import Segmenter
from segqc.training import (
    crossfit_folds,
    fit_predictor,
    fit_segmenter,
    make_predictor,
    quality_samples,
    row_name,
)
from segqc.types import SegPrediction
from segqc.utils import canonical, seed_everything

FLOAT16_MAX = float(np.finfo(np.float16).max)

#: Train-side predictions of a g unit: each pred unit with the training indices it covers (None: all).
TrainSide = list[tuple[Unit, "np.ndarray | None"]]


@dataclass
class Row:
    """One row of Table 1: a quality predictor on the masks (and maps) of one method's f."""

    name: str
    predictor: str
    method: str  # the uncertainty method whose f produced the masks and maps
    variant: str  # "paper", "crossfit", or "reference" (RCA: does not learn from f's predictions)
    per_seed: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SeedPlan:
    """The units of one seed in order, the test-prediction unit per method and the g unit per row."""

    units: list[Unit]
    test_pred: dict[str, Unit]
    g_units: dict[int, Unit]


def stored_prediction(payload: Payload) -> SegPrediction:
    """f's masks and maps as stored by a pred unit (float32 maps; probabilities are not kept)."""
    mask = payload.arrays["mask"]
    return SegPrediction(mask.astype(np.float32), mask, payload.arrays["uncertainty"].astype(np.float32))


def _no_payloads(unit: Unit) -> Payload:
    raise RuntimeError(f"this planner cannot compute units (no get given): {unit.label}")


def fitted_settings(predictor: Any) -> dict[str, Any]:
    """The settings a predictor chose in ``fit`` (its ``chosen_settings``, e.g. RCA's
    ``prior_strength_`` and the validation scores it was chosen by)."""
    names = getattr(predictor, "chosen_settings", ())
    return {k: getattr(predictor, k) for k in names if hasattr(predictor, k)}


class Planner:
    """Builds the units of an experiment on ``train`` and ``test``; ``get`` returns the payload of a
    unit another one reads (a :class:`~segqc.experiment.units.UnitRunner`'s ``get``)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        train: SegData,
        test: SegData,
        *,
        get: Callable[[Unit], Payload] = _no_payloads,
        progress: bool = False,
    ) -> None:
        self.cfg, self.train, self.test, self.get, self.progress = cfg, train, test, get, progress
        self.train_digest, self.test_digest = data_digest(train), data_digest(test)
        self.key_of = {m: training_key(m, cfg.method_settings(m)) for m in cfg.methods}
        self.tkeys: dict[str, str] = {}  # training key -> the method that trains it
        for m in cfg.methods:
            self.tkeys.setdefault(self.key_of[m], m)

    # -- unit builders ----------------------------------------------------------------------------
    def base_key(self, seed: int) -> dict[str, Any]:
        return {"segqc": __version__, "seed": seed, "train": self.train_digest}

    def f_unit(self, tkey: str, seed: int, fold: tuple[int, np.ndarray] | None) -> Unit:
        cfg = self.cfg
        method = self.tkeys[tkey]
        index = np.arange(len(self.train)) if fold is None else fold[1]
        part = "full" if fold is None else f"fold{fold[0] + 1}of{cfg.folds}"
        key = {
            **self.base_key(seed),
            "training": tkey,
            "images": index.tolist() if fold else "all",
            # a method's own settings may change its training, unless its f is shared
            "method_params": cfg.method_settings(method) if tkey == method else {},
            "f": cfg.unit_key("f"),
        }

        def compute() -> Payload:
            data = self.train if fold is None else self.train.subset(index)
            seg = fit_segmenter(cfg.pipeline_config(method, seed), data, progress=self.progress)
            tensors, config = seg.state()
            return Payload(tensors=tensors, meta={"segmenter": config, "history": seg.history_})

        return Unit("f", f"f-{tkey}-s{seed}-{part}", key, compute)

    def pred_unit(
        self, method: str, seed: int, f_unit: Unit, which: str, index: np.ndarray | None = None
    ) -> Unit:
        """Masks and maps of ``method`` with the weights of ``f_unit`` on test, train or train[index]."""
        key = {
            "segqc": __version__,
            "seed": seed,
            "f": f_unit.digest,
            "method": method,
            "method_params": self.cfg.method_settings(method),
            "images": {"test": self.test_digest, "train": self.train_digest}[which.split(":")[0]],
            "index": None if index is None else index.tolist(),
        }

        def compute() -> Payload:
            f = self.get(f_unit)
            config = json.loads(canonical(f.meta["segmenter"]))
            config["params"].update(
                method=method, method_params=self.cfg.method_settings(method), device=self.cfg.device
            )
            seg = Segmenter.from_state(f.tensors, config)
            images = self.test.images if which == "test" else self.train.images
            seed_everything(seed)  # MC dropout samples: the same whether or not earlier units ran
            pred = seg.predict(images if index is None else images[index])
            unc = np.clip(np.nan_to_num(pred.uncertainty, nan=0.0), 0.0, FLOAT16_MAX).astype(np.float16)
            return Payload(arrays={"mask": pred.mask.astype(np.uint8), "uncertainty": unc})

        label = f"pred-{method}-s{seed}-{which.replace(':', '-')}"
        return Unit("pred", label, key, compute)

    def g_unit(self, row: Row, seed: int, train_side: TrainSide, test_pred: Unit) -> Unit:
        """g of ``row`` trained on the train-side predictions (each unit with the indices it covers)."""
        pcfg = self.cfg.pipeline_config(row.method, seed)
        params = make_predictor(row.predictor, pcfg, progress=False).get_params()
        params = {k: v for k, v in params.items() if k not in ("progress", "device")}
        key = {
            **self.base_key(seed),
            "test": self.test_digest,
            "predictor": row.predictor,
            "params": params,
            "variant": row.variant,
            "train_preds": [(u.digest, None if i is None else i.tolist()) for u, i in train_side],
            "test_pred": test_pred.digest,
        }

        def compute() -> Payload:
            # without train-side predictions (RCA's references), g sees the ground truth as masks
            masks, unc = self.train.masks.copy(), np.zeros(self.train.masks.shape, np.float32)
            for unit, index in train_side:
                p = self.get(unit)
                where = slice(None) if index is None else index
                masks[where], unc[where] = p.arrays["mask"], p.arrays["uncertainty"].astype(np.float32)
            train_samples = quality_samples(self.train, SegPrediction(masks, masks, unc))
            # no ground truth on the test side: nothing can leak into the prediction
            test_samples = quality_samples(self.test, stored_prediction(self.get(test_pred)), labelled=False)
            predictor = fit_predictor(row.predictor, pcfg, train_samples, progress=self.progress)
            q = np.asarray(predictor.predict(test_samples), dtype=np.float64)
            meta = {"history": getattr(predictor, "history_", None), "fitted": fitted_settings(predictor)}
            return Payload(arrays={"predicted": q}, meta=meta)

        slug = row.name.replace(CROSSFIT_SUFFIX, "-crossfit").replace(" ", "_")
        return Unit("g", f"g-{slug}-s{seed}", key, compute)

    # -- plan -------------------------------------------------------------------------------------
    def rows(self) -> list[Row]:
        cfg = self.cfg
        rows: list[Row] = []

        def add(predictor: str, method: str) -> None:
            name = row_name(method, PREDICTORS.get(predictor)())
            if not PREDICTORS.get(predictor).learns_from_predictions:
                rows.append(Row(name, predictor, method, "reference"))
                return
            for variant in cfg.variants:
                suffix = CROSSFIT_SUFFIX if variant == "crossfit" else ""
                rows.append(Row(name + suffix, predictor, method, variant))

        for m in cfg.methods:
            add("uncertainty", m)
        for b in cfg.baselines:
            add(b, cfg.methods[0])
        return rows

    def folds(self, seed: int) -> list[np.ndarray]:
        return crossfit_folds(len(self.train), self.cfg.folds, seed)

    def plan(self, seed: int, rows: list[Row]) -> SeedPlan:
        """All units of one seed in order; also the test-prediction unit per method, g unit per row."""
        cfg, n = self.cfg, len(self.train)
        variants = {r.variant for r in rows}
        units: list[Unit] = []
        full = {k: self.f_unit(k, seed, None) for k in self.tkeys}
        units += full.values()
        test_pred = {m: self.pred_unit(m, seed, full[self.key_of[m]], "test") for m in cfg.methods}
        units += test_pred.values()
        train_side: dict[tuple[str, str], TrainSide] = {}
        for m in cfg.methods:
            if "paper" in variants:
                u = self.pred_unit(m, seed, full[self.key_of[m]], "train")
                units.append(u)
                train_side[(m, "paper")] = [(u, None)]
            train_side[(m, "reference")] = []
        if "crossfit" in variants:
            folds = self.folds(seed)  # refused when they leave too few images to train f
            for k, index in enumerate(folds):
                rest = np.setdiff1d(np.arange(n), index)
                fold_f = {t: self.f_unit(t, seed, (k, rest)) for t in self.tkeys}
                units += fold_f.values()
                for m in cfg.methods:
                    which = f"train:fold{k + 1}of{cfg.folds}"
                    u = self.pred_unit(m, seed, fold_f[self.key_of[m]], which, index)
                    units.append(u)
                    train_side.setdefault((m, "crossfit"), []).append((u, index))
        g_units = {
            i: self.g_unit(row, seed, train_side[(row.method, row.variant)], test_pred[row.method])
            for i, row in enumerate(rows)
        }
        units += g_units.values()
        return SeedPlan(units, test_pred, g_units)
