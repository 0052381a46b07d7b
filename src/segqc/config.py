"""Run settings as plain dataclasses, saved with every run and model.

:class:`TrainingSettings` holds the settings of training f and g that one pipeline run
(:class:`PipelineConfig`) and an experiment (:class:`~segqc.experiment.ExperimentConfig`) share:
a new training setting is added there, once, and both get it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from segqc.errors import SegQCError

_C = TypeVar("_C", bound="TrainingSettings")

#: Learning-rate schedules of the training loop (:func:`segqc.engine.train_loop`).
LR_SCHEDULES = ("constant", "cosine")


def check_lr_schedule(value: str, name: str = "lr_schedule") -> None:
    """Raise a ``SegQCError`` naming ``name`` unless ``value`` is one of :data:`LR_SCHEDULES`."""
    if value not in LR_SCHEDULES:
        raise SegQCError(f"{name} must be one of {', '.join(LR_SCHEDULES)}, got {value!r}")


def _setting(default: Any, *stages: str, keyed_when_set: bool = False) -> Any:
    """A training setting with the stages whose result it changes (``"f"``, ``"g"``; none when it
    only enters the metrics or the placement), so an experiment knows which cached units it affects.
    ``keyed_when_set``: a setting added after runs were cached; :meth:`TrainingSettings.unit_key`
    names it only when it differs from its default, so those caches stay valid."""
    return field(default=default, metadata={"stages": stages, "keyed_when_set": keyed_when_set})


@dataclass
class TrainingSettings:
    """Settings of training f and g, shared by every kind of run.

    Defaults are sized for a 2-core CPU at 64x64; the paper used 224x224, 120 epochs for f and
    30 for g.
    """

    image_size: int = _setting(64, "f", "g")
    base_width: int = _setting(16, "f")
    dropout: float = _setting(0.5, "f")
    seg_epochs: int = _setting(10, "f")
    quality_epochs: int = _setting(15, "g")
    quality_width: int = _setting(16, "g")
    batch_size: int = _setting(16, "f", "g")
    lr: float = _setting(1e-3, "f", "g")
    seg_lr_schedule: str = _setting("constant", "f", keyed_when_set=True)
    threshold: float = _setting(0.7)
    device: str = _setting("auto")

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 16:
            raise SegQCError(
                f"image size must be a multiple of 16 (the U-Net halves it 4 times), got {self.image_size}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise SegQCError(f"threshold must be in (0, 1), got {self.threshold}")
        check_lr_schedule(self.seg_lr_schedule, "seg_lr_schedule")
        for name in ("seg_epochs", "quality_epochs", "batch_size", "base_width", "quality_width"):
            if getattr(self, name) < 1:
                raise SegQCError(f"{name} must be at least 1, got {getattr(self, name)}")

    @staticmethod
    def names(stage: str | None = None) -> list[str]:
        """The shared training settings, or those that change the result of ``stage`` (``"f"``, ``"g"``)."""
        return [
            f.name
            for f in dataclasses.fields(TrainingSettings)
            if stage is None or stage in f.metadata.get("stages", ())
        ]

    def training_settings(self, stage: str | None = None) -> dict[str, Any]:
        """The values of :meth:`names`."""
        return {name: getattr(self, name) for name in self.names(stage)}

    def unit_key(self, stage: str) -> dict[str, Any]:
        """The settings that change ``stage``'s result, for a cache key: :meth:`training_settings`
        without the later-added settings left at their defaults (older cached units stay valid)."""
        fields = {f.name: f for f in dataclasses.fields(TrainingSettings)}
        return {
            name: value
            for name, value in self.training_settings(stage).items()
            if not (fields[name].metadata.get("keyed_when_set") and value == fields[name].default)
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SegQCError(f"unknown {cls._what} keys: {', '.join(unknown)}")
        return cls(**data)

    def replace(self: _C, **changes: Any) -> _C:
        """A copy with ``changes``; ``None`` values keep the current setting (unset CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    _what = "config"  # names the config in errors (a class attribute, not a field)


@dataclass
class PipelineConfig(TrainingSettings):
    """Settings of one pipeline run: f with one uncertainty method, then quality predictors g, at one
    seed; the training settings are :class:`TrainingSettings`'."""

    method: str = "msp"
    method_params: dict[str, Any] = field(default_factory=dict)
    # g with the uncertainty map (the paper's method) and without it (the ablation), for comparison
    predictors: list[str] = field(default_factory=lambda: ["uncertainty", "no-uncertainty"])
    predictor_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
