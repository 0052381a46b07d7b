"""Run settings as a plain dataclass, saved with every run and model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from segqc.errors import SegQCError


@dataclass
class PipelineConfig:
    """Settings of one pipeline run: f with one uncertainty method, then quality predictors g.

    Defaults are sized for a 2-core CPU at 64x64; the paper used 224x224, 120 epochs for f and
    30 for g.
    """

    method: str = "msp"
    method_params: dict[str, Any] = field(default_factory=dict)
    # g with the uncertainty map (the paper's method) and without it (the ablation), for comparison
    predictors: list[str] = field(default_factory=lambda: ["uncertainty", "no-uncertainty"])
    predictor_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_size: int = 64
    base_width: int = 16
    dropout: float = 0.5
    seg_epochs: int = 10
    quality_epochs: int = 15
    quality_width: int = 16
    batch_size: int = 16
    lr: float = 1e-3
    threshold: float = 0.7
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.image_size % 16:
            raise SegQCError(
                f"image size must be a multiple of 16 (the U-Net halves it 4 times), got {self.image_size}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise SegQCError(f"threshold must be in (0, 1), got {self.threshold}")
        for name in ("seg_epochs", "quality_epochs", "batch_size", "base_width", "quality_width"):
            if getattr(self, name) < 1:
                raise SegQCError(f"{name} must be at least 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SegQCError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> PipelineConfig:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
