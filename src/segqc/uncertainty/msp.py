"""Maximum softmax probability (Hendrycks & Gimpel 2017): z = 1 - max_c p_c, in [0, 0.5]."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from segqc.postprocess import two_class_map
from segqc.uncertainty.base import UncertaintyMethod, register_method, softmax_probs

if TYPE_CHECKING:
    from torch import Tensor


@register_method("msp")
class MaxSoftmax(UncertaintyMethod):
    """One deterministic forward pass; uncertainty is one minus the winning class probability."""

    precomputed = "single"

    def precomputed_map(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One map (several: their mean) -> ``1 - max(p, 1 - p)``."""
        return two_class_map(np.mean(maps, axis=0, keepdims=True, dtype=np.float32))

    def training_key(self) -> str:
        return "ce"  # plain cross-entropy on the plain U-Net, as mcdropout

    def head(self, output: Tensor) -> tuple[Tensor, Tensor]:
        probs = softmax_probs(output)
        return probs, 1.0 - probs.max(dim=1).values
