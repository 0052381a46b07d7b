"""The paper's Table 1: every uncertainty method and baseline over several seeds, resumable.

For each seed, the experiment trains the segmentation network f once per uncertainty method,
reads its masks and uncertainty maps on the training and test images, trains the quality predictors
g on the training side and scores them on the test side:

- one row per uncertainty method ``m``: the paper's g(x, y^, z) (predictor ``uncertainty``) on the
  maps of ``m``'s f;
- one row per baseline (``no-uncertainty``, ``qualitynet``, ``rca``): on the masks of the f of the
  *first* method of ``methods`` (``msp`` by default), as baselines do not read the maps.

**Training data of g.** The paper trains g on f's predictions over f's own training images
(``quality_train="paper"``); those are better than f's test predictions, so g learns from too few
failures. ``"crossfit"`` splits the training images into ``folds`` folds and takes each image's
mask and map from an f trained on the other folds; the final f (trained on all training images)
still produces the test predictions. ``"both"`` reports both, as rows ``"m"`` and ``"m (crossfit)"``.
RCA does not learn from f's predictions (only from reference images with their ground truth), so it
has one row whatever ``quality_train`` is.

**Shared f.** ``msp`` and ``mcdropout`` train the same network with the same loss (plain
cross-entropy) and differ only at test time, so with one seed they share one trained f. Two
methods share f when they have the same ``training_key`` class attribute, or, when a method has
none, when it uses :class:`~segqc.uncertainty.UncertaintyMethod`'s own ``build`` and ``loss``
and no extra output channel: :class:`~segqc.segmenter.Segmenter` uses nothing else in training.

**Units and resuming.** The work is cut into units, each cached under ``out_dir/units/`` in a
folder named by the unit and a hash of everything that determines it (the relevant settings, the
data's ids and pixels, the method's and predictor's parameters, the seed, the segqc version, and
the hashes of the units it reads):

- ``f-<training key>-s<seed>-<full|foldKofN>``: trained weights (``weights.safetensors``);
- ``pred-<method>-s<seed>-<full-train|full-test|foldKofN>``: masks (uint8) and uncertainty maps
  (float16; probabilities are not kept) on a set of images (``arrays.npz``);
- ``g-<row>-s<seed>``: g's predicted Jaccard of every test image (``arrays.npz``).

Each unit's files are written atomically and its ``unit.json`` (the full key) last, so a killed run
leaves either a finished unit or none. A rerun loads finished units whose key matches and computes
the rest; a changed setting changes the hash, so the unit is recomputed (never silently reused),
while units it does not affect are reused. The device is not part of the key. Quality metrics are
computed from the cached predictions at the end (so changing ``threshold`` recomputes nothing).
Every unit re-seeds everything it uses, so a resumed run gives the same numbers as an uninterrupted
one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segqc import __version__
from segqc.config import PipelineConfig
from segqc.data.dataset import SegData
from segqc.data.splits import DEMO_TEST, DEMO_TRAIN, load_train_test
from segqc.engine import is_main_process
from segqc.errors import SegQCError
from segqc.metrics import QUALITY_KEYS, jaccard, quality_metrics
from segqc.quality import PREDICTORS
from segqc.segmenter import Segmenter
from segqc.training import make_predictor, make_segmenter, row_name, segmentation_summary
from segqc.types import QualitySamples, SegPrediction
from segqc.uncertainty import METHODS, create_method
from segqc.utils import atomic_write, resolve_device, seed_everything, versions, write_json

QUALITY_TRAIN = ("paper", "crossfit", "both")
CROSSFIT_SUFFIX = " (crossfit)"
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class ExperimentConfig:
    """Settings of a Table 1 experiment (turned into a :class:`PipelineConfig` per unit).

    Attributes:
        methods: uncertainty methods, one row each; the first one's f also serves the baselines.
        baselines: quality predictors that do not read the uncertainty map.
        seeds: one full repetition per seed (f, g and RCA references are seeded with it).
        quality_train: ``paper``, ``crossfit`` or ``both`` (see the module docstring).
        folds: folds of the cross-fitting.
        rca_references: reference images of the RCA baseline.
        mc_samples: dropout samples of ``mcdropout`` (None keeps its default).
        method_params: extra settings per method, e.g. ``{"lce": {"budget": 0.3}}``.
        n_train, n_test: sizes of the embedded synthetic data (ignored with a data folder).
        data_seed: generator seed of the synthetic data, and of the 80/20 split of a data folder
            without a protocol; fixed across ``seeds`` so every seed sees the same data.
        The others are as in :class:`~segqc.config.PipelineConfig`.
    """

    methods: list[str] = field(default_factory=lambda: ["msp", "mcdropout", "hcnn", "lce"])
    baselines: list[str] = field(default_factory=lambda: ["no-uncertainty", "qualitynet", "rca"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    image_size: int = 64
    base_width: int = 16
    quality_width: int = 16
    dropout: float = 0.5
    seg_epochs: int = 10
    quality_epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-3
    threshold: float = 0.7
    quality_train: str = "paper"
    folds: int = 3
    rca_references: int = 20
    mc_samples: int | None = None
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_train: int = DEMO_TRAIN
    n_test: int = DEMO_TEST
    data_seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self.methods, self.baselines = list(self.methods), list(self.baselines)
        self.seeds = [int(s) for s in self.seeds]
        if not self.methods:
            raise SegQCError("at least one uncertainty method is needed")
        for what, names in (("methods", self.methods), ("baselines", self.baselines), ("seeds", self.seeds)):
            if len(set(names)) != len(names):
                raise SegQCError(f"{what} has duplicates: {names}")
        for name in self.methods:
            METHODS.get(name)  # UnknownNameError (a SegQCError) lists the known names
        for name in self.baselines:
            if PREDICTORS.get(name).uses_uncertainty:
                raise SegQCError(f"{name!r} reads the uncertainty map, so it is not a baseline")
        if not self.seeds or min(self.seeds) < 0:
            raise SegQCError(f"seeds must be a non-empty list of non-negative integers, got {self.seeds}")
        if self.quality_train not in QUALITY_TRAIN:
            raise SegQCError(
                f"quality_train must be one of {', '.join(QUALITY_TRAIN)}, got {self.quality_train!r}"
            )
        if self.folds < 2:
            raise SegQCError(f"folds must be at least 2, got {self.folds}")
        if self.rca_references < 1 or (self.mc_samples is not None and self.mc_samples < 1):
            raise SegQCError("rca_references and mc_samples must be at least 1")
        if self.n_train < 2 or self.n_test < 1:
            raise SegQCError(
                f"need at least 2 training and 1 test image, got {self.n_train} and {self.n_test}"
            )
        self.pipeline_config(self.methods[0], self.seeds[0])  # PipelineConfig's own checks

    @property
    def variants(self) -> list[str]:
        """Training data of g to report: ``["paper"]``, ``["crossfit"]`` or both."""
        return ["paper", "crossfit"] if self.quality_train == "both" else [self.quality_train]

    def method_settings(self, method: str) -> dict[str, Any]:
        params = dict(self.method_params.get(method, {}))
        if method == "mcdropout" and self.mc_samples is not None:
            params["samples"] = self.mc_samples
        return params

    def pipeline_config(self, method: str, seed: int) -> PipelineConfig:
        """The settings of one unit: f with ``method`` and the quality predictors, at ``seed``."""
        return PipelineConfig(
            method=method,
            method_params=self.method_settings(method),
            predictors=[],
            predictor_params={"rca": {"n_references": self.rca_references}},
            image_size=self.image_size,
            base_width=self.base_width,
            dropout=self.dropout,
            seg_epochs=self.seg_epochs,
            quality_epochs=self.quality_epochs,
            quality_width=self.quality_width,
            batch_size=self.batch_size,
            lr=self.lr,
            threshold=self.threshold,
            seed=seed,
            device=self.device,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise SegQCError(f"unknown experiment config keys: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with ``changes``; ``None`` values keep the current setting (unset CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def training_key(method: str, params: dict[str, Any] | None = None) -> str:
    """Methods with the same key train the same f (same network, loss and seed give the same weights)."""
    return create_method(method, **(params or {})).training_key()


# -- units ----------------------------------------------------------------------------------------


@dataclass
class Payload:
    """What a unit produces: arrays (saved as .npz), tensors (safetensors) and JSON-able meta."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Unit:
    """One cacheable piece of work. ``key`` holds everything its result depends on."""

    kind: str
    label: str
    key: dict[str, Any]
    compute: Callable[[], Payload] = field(repr=False, compare=False)

    @property
    def digest(self) -> str:
        return _digest({"kind": self.kind, "key": self.key})

    @property
    def folder(self) -> str:
        return f"{self.label}-{self.digest}"


def run_unit(unit: Unit) -> Payload:
    """Compute one unit: the only place where training and prediction happen."""
    return unit.compute()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _digest(obj: Any) -> str:
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:16]


def data_digest(data: SegData) -> str:
    """Hash of a data set's ids, images and masks."""
    h = hashlib.sha256(_canonical(list(data.ids)).encode())
    h.update(np.ascontiguousarray(data.images).tobytes())
    h.update(np.ascontiguousarray(data.masks).tobytes())
    return h.hexdigest()[:16]


class UnitStore:
    """Finished units under ``root``: one folder each, ``unit.json`` written last."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self, unit: Unit) -> tuple[Payload, float] | None:
        """The cached payload and its compute time, or None if absent, unfinished or of another key."""
        folder = self.root / unit.folder
        try:
            info = json.loads((folder / "unit.json").read_text())
            if info.get("key") != json.loads(_canonical(unit.key)):
                return None
            payload = Payload(meta=info.get("meta", {}))
            if info.get("has_arrays"):
                with np.load(folder / "arrays.npz", allow_pickle=False) as z:
                    payload.arrays = {k: z[k] for k in z.files}
            if info.get("has_tensors"):
                from safetensors.torch import load_file

                payload.tensors = load_file(str(folder / "weights.safetensors"))
            return payload, float(info.get("seconds", 0.0))
        except Exception:  # absent, unfinished or damaged: recomputed, never trusted
            return None

    def save(self, unit: Unit, payload: Payload, seconds: float) -> None:
        if not is_main_process():  # under torchrun, rank 0 writes; every rank computes the same units
            return
        folder = self.root / unit.folder
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / "unit.json")  # the old marker must not vouch for new, half-written files
        if payload.arrays:
            with atomic_write(folder / "arrays.npz") as fh:
                np.savez_compressed(fh, **payload.arrays)
        if payload.tensors:
            from safetensors.torch import save

            with atomic_write(folder / "weights.safetensors") as fh:
                fh.write(save({k: v.contiguous() for k, v in payload.tensors.items()}))
        write_json(
            folder / "unit.json",
            {
                "kind": unit.kind,
                "label": unit.label,
                "digest": unit.digest,
                "key": unit.key,
                "meta": payload.meta,
                "seconds": seconds,
                "has_arrays": bool(payload.arrays),
                "has_tensors": bool(payload.tensors),
                "segqc": __version__,
            },
        )


# -- the experiment -------------------------------------------------------------------------------


@dataclass
class _Row:
    name: str
    predictor: str
    method: str  # the uncertainty method whose f produced the masks and maps
    variant: str  # "paper", "crossfit", or "reference" (RCA: does not learn from f's predictions)
    per_seed: list[dict[str, Any]] = field(default_factory=list)


class _Experiment:
    def __init__(
        self, cfg: ExperimentConfig, train: SegData, test: SegData, out: Path, progress: bool
    ) -> None:
        self.cfg, self.train, self.test, self.progress = cfg, train, test, progress
        self.store = UnitStore(out / "units")
        self.memo: dict[str, Payload] = {}
        self.train_digest, self.test_digest = data_digest(train), data_digest(test)
        self.start = time.perf_counter()
        self.done = 0
        self.total = 0
        self.computed = 0
        self.compute_seconds = 0.0
        self.tkeys: dict[str, str] = {}  # training key -> the method that trains it
        for m in cfg.methods:
            self.tkeys.setdefault(training_key(m), m)

    def log(self, message: str) -> None:
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)

    def get(self, unit: Unit) -> Payload:
        if unit.digest in self.memo:
            return self.memo[unit.digest]
        cached = self.store.load(unit)
        if cached is not None:
            payload, seconds = cached
            status = f"cached ({seconds:.1f} s when computed)"
        else:
            t0 = time.perf_counter()
            payload = run_unit(unit)
            seconds = time.perf_counter() - t0
            self.store.save(unit, payload, seconds)
            self.computed += 1
            status = f"computed in {seconds:.1f} s"
        self.compute_seconds += seconds
        self.memo[unit.digest] = payload
        self.done += 1
        self.log(
            f"[{self.done}/{self.total}] {unit.label}: {status}; "
            f"{time.perf_counter() - self.start:.0f} s elapsed"
        )
        return payload

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
            "f": {
                k: getattr(cfg, k)
                for k in ("image_size", "base_width", "dropout", "seg_epochs", "batch_size", "lr")
            },
        }

        def compute() -> Payload:
            seg = make_segmenter(cfg.pipeline_config(method, seed), progress=self.progress)
            seg.fit(self.train if fold is None else self.train.subset(index))
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
            config = json.loads(_canonical(f.meta["segmenter"]))
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

    def g_unit(
        self, row: _Row, seed: int, train_side: list[tuple[Unit, np.ndarray | None]], test_pred: Unit
    ) -> Unit:
        """g of ``row`` trained on the train-side predictions (each unit with the indices it covers)."""
        cfg = self.cfg
        pcfg = cfg.pipeline_config(row.method, seed)
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
            n, shape = len(self.train), self.train.masks.shape
            masks, unc = self.train.masks.copy(), np.zeros(shape, np.float32)
            for unit, index in train_side:
                p = self.get(unit)
                where = slice(None) if index is None else index
                masks[where], unc[where] = p.arrays["mask"], p.arrays["uncertainty"].astype(np.float32)
            train_j = jaccard(masks, self.train.masks) if train_side else np.ones(n)
            train_samples = QualitySamples(
                self.train.images, masks, unc, train_j, self.train.masks, list(self.train.ids)
            )
            t = self.get(test_pred)
            # no ground truth on the test side: nothing can leak into the prediction
            test_samples = QualitySamples(
                self.test.images, t.arrays["mask"], t.arrays["uncertainty"].astype(np.float32)
            )
            predictor = make_predictor(row.predictor, pcfg, progress=self.progress).fit(train_samples)
            q = np.asarray(predictor.predict(test_samples), dtype=np.float64)
            return Payload(arrays={"predicted": q}, meta={"history": getattr(predictor, "history_", None)})

        slug = row.name.replace(CROSSFIT_SUFFIX, "-crossfit").replace(" ", "_")
        return Unit("g", f"g-{slug}-s{seed}", key, compute)

    # -- plan -------------------------------------------------------------------------------------
    def rows(self) -> list[_Row]:
        cfg = self.cfg
        rows: list[_Row] = []

        def add(predictor: str, method: str) -> None:
            name = row_name(method, PREDICTORS.get(predictor)())
            if not PREDICTORS.get(predictor).learns_from_predictions:
                rows.append(_Row(name, predictor, method, "reference"))
                return
            for variant in cfg.variants:
                suffix = CROSSFIT_SUFFIX if variant == "crossfit" else ""
                rows.append(_Row(name + suffix, predictor, method, variant))

        for m in cfg.methods:
            add("uncertainty", m)
        for b in cfg.baselines:
            add(b, cfg.methods[0])
        return rows

    def folds(self, seed: int) -> list[np.ndarray]:
        order = np.random.default_rng(seed).permutation(len(self.train))
        return [np.sort(part) for part in np.array_split(order, self.cfg.folds)]

    def plan(self, seed: int, rows: list[_Row]) -> tuple[list[Unit], dict[str, Unit], dict[int, Unit]]:
        """All units of one seed in order; also the test-prediction unit per method, g unit per row."""
        cfg = self.cfg
        variants = {r.variant for r in rows}
        units: list[Unit] = []
        full = {k: self.f_unit(k, seed, None) for k in self.tkeys}
        units += full.values()
        test_pred = {m: self.pred_unit(m, seed, full[training_key(m)], "test") for m in cfg.methods}
        units += test_pred.values()
        train_side: dict[tuple[str, str], list[tuple[Unit, np.ndarray | None]]] = {}
        for m in cfg.methods:
            if "paper" in variants:
                u = self.pred_unit(m, seed, full[training_key(m)], "train")
                units.append(u)
                train_side[(m, "paper")] = [(u, None)]
            train_side[(m, "reference")] = []
        if "crossfit" in variants:
            folds = self.folds(seed)
            if min(len(self.train) - len(f) for f in folds) < 2:
                raise SegQCError(
                    f"{cfg.folds} folds of {len(self.train)} training images leave too few to train f"
                )
            for k, index in enumerate(folds):
                fold_f = {
                    t: self.f_unit(t, seed, (k, np.setdiff1d(np.arange(len(self.train)), index)))
                    for t in self.tkeys
                }
                units += fold_f.values()
                for m in cfg.methods:
                    u = self.pred_unit(
                        m, seed, fold_f[training_key(m)], f"train:fold{k + 1}of{cfg.folds}", index
                    )
                    units.append(u)
                    train_side.setdefault((m, "crossfit"), []).append((u, index))
        g_units = {}
        for i, row in enumerate(rows):
            g_units[i] = self.g_unit(row, seed, train_side[(row.method, row.variant)], test_pred[row.method])
        units += g_units.values()
        return units, test_pred, g_units


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation over seeds, skipping NaN (None if no value, std None for one)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    return float(np.mean(finite)), (float(np.std(finite, ddof=1)) if len(finite) > 1 else None)


def run_experiment(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    data: str | Path | tuple[SegData, SegData] | None = None,
    protocol: str | Path | None = None,
    progress: bool = True,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the experiment; write results.json, table1.md, report.md and figures/.

    Args:
        cfg: the settings.
        out_dir: output folder; its ``units/`` cache makes a rerun resume where it stopped.
        data: a data folder (ISIC 2017 or images/ + masks/), ``(train, test)`` arrays, or None for
            the embedded synthetic data (``cfg.n_train`` + ``cfg.n_test`` images).
        protocol: JSON file with ``train`` and ``test`` id lists; without one a data folder is split
            80/20 (seeded by ``cfg.data_seed``).
        progress: progress bars and a log line per unit on stderr.
        command: the command line to record. Defaults to ``sys.argv``.
    Returns:
        The content of ``results.json``.
    """
    from segqc.experiment.report import write_experiment_report

    start = time.perf_counter()
    out = Path(out_dir)
    if isinstance(data, tuple):
        train, test = data
        info: dict[str, Any] = {"source": "arrays", "protocol": None}
    else:
        train, test, info = load_train_test(
            data, protocol, size=cfg.image_size, seed=cfg.data_seed, n_train=cfg.n_train, n_test=cfg.n_test
        )
        info.setdefault("protocol", str(protocol) if protocol else None)
    if test is None:
        raise SegQCError(f"{protocol}: the protocol has no 'test' list, which the experiment evaluates on")
    if len(train) < 2 or len(test) < 1:
        raise SegQCError(f"need at least 2 training and 1 test image, got {len(train)} and {len(test)}")
    if train.size != cfg.image_size or test.size != cfg.image_size:
        raise SegQCError(f"the images are {train.size} px, the config says image_size {cfg.image_size}")
    resolve_device(cfg.device)  # fail early on --device cuda without CUDA
    main = is_main_process()
    if main:
        write_json(out / "config.json", cfg.to_dict())

    exp = _Experiment(cfg, train, test, out, progress)
    rows = exp.rows()
    plans = [exp.plan(seed, rows) for seed in cfg.seeds]
    exp.total = sum(len(units) for units, _, _ in plans)
    exp.log(
        f"experiment: {len(rows)} rows x {len(cfg.seeds)} seeds, {exp.total} units, cache {exp.store.root}"
    )

    segmentation: dict[str, list[dict[str, float]]] = {m: [] for m in cfg.methods}
    first: dict[str, Any] = {}  # first seed: test predictions per method, predicted quality per row
    for s_i, (seed, (units, test_pred, g_units)) in enumerate(zip(cfg.seeds, plans)):
        for unit in units:
            exp.get(unit)
        true_j = {}
        for m in cfg.methods:
            p = exp.get(test_pred[m])
            mask = p.arrays["mask"]
            true_j[m] = jaccard(mask, test.masks)
            pred = SegPrediction(mask.astype(np.float32), mask, p.arrays["uncertainty"].astype(np.float32))
            segmentation[m].append({"seed": seed, **segmentation_summary(pred, test, cfg.threshold)})
            if s_i == 0:
                first.setdefault("maps", {})[m] = (mask, pred.uncertainty)
        for i, row in enumerate(rows):
            q = exp.get(g_units[i]).arrays["predicted"]
            with warnings.catch_warnings(record=True):  # one-class test sets give NaN, reported as null
                warnings.simplefilter("always")
                metrics = quality_metrics(q, true_j[row.method], cfg.threshold)
            row.per_seed.append(
                {"seed": seed, "metrics": metrics, "segmentation_jaccard": float(true_j[row.method].mean())}
            )
            if s_i == 0:
                first.setdefault("quality", {})[row.name] = (true_j[row.method], q)
        exp.memo.clear()  # free this seed's arrays

    result_rows = []
    for row in rows:
        metrics, std = {}, {}
        for k in QUALITY_KEYS:
            metrics[k], std[k] = _mean_std([s["metrics"][k] for s in row.per_seed])
        seg_mean, seg_std = _mean_std([s["segmentation_jaccard"] for s in row.per_seed])
        result_rows.append(
            {
                "method": row.name,
                "predictor": row.predictor,
                "uncertainty_method": row.method,
                "quality_train": row.variant,
                "metrics": metrics,
                "std": std,
                "per_seed": row.per_seed,
                "segmentation_jaccard": seg_mean,
                "segmentation_jaccard_std": seg_std,
            }
        )
    seg_summary = {}
    for m, per_seed in segmentation.items():
        entry: dict[str, Any] = {}
        for k in ("jaccard_mean", "dice_mean", "failure_rate"):
            entry[k], entry[k.replace("_mean", "") + "_std"] = _mean_std([s[k] for s in per_seed])
        seg_summary[m] = {**entry, "n_images": len(test), "per_seed": per_seed}

    first_row = rows[0].name
    t0, q0 = first["quality"][first_row]
    results = {
        "config": cfg.to_dict(),
        "versions": versions(),
        "data": {
            **info,
            "n_train": len(train),
            "n_test": len(test),
            "train_ids": list(train.ids),
            "test_ids": list(test.ids),
        },
        "command": list(sys.argv if command is None else command),
        "wall_time_s": time.perf_counter() - start,
        "compute_time_s": exp.compute_seconds,
        "units": {"total": exp.total, "computed": exp.computed, "cached": exp.total - exp.computed},
        "machine": _machine(),
        "baseline_f": cfg.methods[0],
        "segmentation": seg_summary,
        "rows": result_rows,
        "per_image": [
            {"id": id_, "true_jaccard": float(t), "predicted_jaccard": float(q)}
            for id_, t, q in zip(test.ids, t0, q0)
        ],
        "per_image_by_row": {
            name: {"true_jaccard": t.tolist(), "predicted_jaccard": q.tolist()}
            for name, (t, q) in first["quality"].items()
        },
    }
    if main:
        write_json(out / "results.json", results)
        write_experiment_report(out, results, test=test, maps=first["maps"])
        results["wall_time_s"] = time.perf_counter() - start
        write_json(out / "results.json", results)  # again, with the report's time included
    return results
