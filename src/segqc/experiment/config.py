"""The settings of a Table 1 experiment."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from segqc.config import PipelineConfig, TrainingSettings
from segqc.data.splits import DEMO_TEST, DEMO_TRAIN
from segqc.errors import SegQCError
from segqc.quality import PREDICTORS
from segqc.uncertainty import create_method

QUALITY_TRAIN = ("paper", "crossfit", "both")
CROSSFIT_SUFFIX = " (crossfit)"

#: Named settings of whole experiments; explicit options override them. ``paper``: DeVries & Taylor
#: 2018, section 4 - images resized to 224 x 224, f trained 120 epochs and g 30 epochs, batches of 16,
#: Adam at 1e-3, five runs with random initialisations, every row of their Table 1 (plus our tta and
#: ensemble rows, which are not in the paper), MC dropout "after each central convolutional block"
#: as in Bayesian SegNet (``placement=segnet``; it then trains its own f).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "image_size": 224,
        "seg_epochs": 120,
        "quality_epochs": 30,
        "batch_size": 16,
        "lr": 1e-3,
        "seeds": [0, 1, 2, 3, 4],
        "methods": ["msp", "mcdropout", "hcnn", "lce", "tta", "ensemble"],
        "baselines": ["no-uncertainty", "qualitynet", "rca"],
        "quality_train": "paper",
        "method_params": {"mcdropout": {"placement": "segnet"}},
    }
}


def training_key(method: str, params: dict[str, Any] | None = None) -> str:
    """Methods with the same key train the same f (same network, loss and seed give the same weights)."""
    return create_method(method, **(params or {})).training_key()


@dataclass
class ExperimentConfig(TrainingSettings):
    """Settings of a Table 1 experiment (turned into a :class:`PipelineConfig` per unit).

    The training settings (image size, widths, epochs, batch size, learning rate, threshold, device)
    are :class:`~segqc.config.TrainingSettings`', shared with :class:`PipelineConfig`.

    Attributes:
        methods: uncertainty methods, one row each; the first one's f also serves the baselines.
        baselines: quality predictors that do not read the uncertainty map.
        seeds: one full repetition per seed (f, g and RCA references are seeded with it).
        quality_train: ``paper``, ``crossfit`` or ``both`` (see :mod:`segqc.experiment`).
        folds: folds of the cross-fitting.
        rca_references: reference images of the RCA baseline.
        method_params: settings per method, e.g. ``{"lce": {"budget": 0.3}, "mcdropout": {"samples": 7}}``.
        n_train, n_test: sizes of the embedded synthetic data (ignored with a data folder).
        data_seed: generator seed of the synthetic data, and of the 80/20 split of a data folder
            without a protocol; fixed across ``seeds`` so every seed sees the same data.
    """

    _what = "experiment config"

    methods: list[str] = field(default_factory=lambda: ["msp", "mcdropout", "hcnn", "lce"])
    baselines: list[str] = field(default_factory=lambda: ["no-uncertainty", "qualitynet", "rca"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    quality_train: str = "paper"
    folds: int = 3
    rca_references: int = 20
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_train: int = DEMO_TRAIN
    n_test: int = DEMO_TEST
    data_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.methods, self.baselines = list(self.methods), list(self.baselines)
        self.seeds = [int(s) for s in self.seeds]
        if not self.methods:
            raise SegQCError("at least one uncertainty method is needed")
        for what, names in (("methods", self.methods), ("baselines", self.baselines), ("seeds", self.seeds)):
            if len(set(names)) != len(names):
                raise SegQCError(f"{what} has duplicates: {names}")
        for name in self.methods:
            # UnknownNameError (a SegQCError) lists the known names; the method checks its settings
            training_key(name, self.method_settings(name))
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
        if self.rca_references < 1:
            raise SegQCError(f"rca_references must be at least 1, got {self.rca_references}")
        if self.n_train < 2 or self.n_test < 1:
            raise SegQCError(
                f"need at least 2 training and 1 test image, got {self.n_train} and {self.n_test}"
            )

    @classmethod
    def preset(cls, name: str | None) -> ExperimentConfig:
        """The config of a named preset (:data:`PRESETS`), or the defaults for ``None``.

        ``.replace(method_params=...)`` replaces the preset's method settings whole; to add to them
        (as ``--method-param`` does), merge into ``cfg.method_params`` first.
        """
        if name is None:
            return cls()
        if name not in PRESETS:
            raise SegQCError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(**copy.deepcopy(PRESETS[name]))  # the caller may change its lists and dicts

    @property
    def variants(self) -> list[str]:
        """Training data of g to report: ``["paper"]``, ``["crossfit"]`` or both."""
        return ["paper", "crossfit"] if self.quality_train == "both" else [self.quality_train]

    def method_settings(self, method: str) -> dict[str, Any]:
        return dict(self.method_params.get(method, {}))

    def pipeline_config(self, method: str, seed: int) -> PipelineConfig:
        """The settings of one unit: f with ``method`` and the quality predictors, at ``seed``."""
        return PipelineConfig(
            **self.training_settings(),
            method=method,
            method_params=self.method_settings(method),
            predictors=[],
            predictor_params={"rca": {"n_references": self.rca_references}},
            seed=seed,
        )
