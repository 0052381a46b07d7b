"""Maximum softmax probability (Hendrycks & Gimpel 2017): z = 1 - max_c p_c, in [0, 0.5]."""

from __future__ import annotations

from torch import Tensor

from segqc.networks.unet import UNet
from segqc.uncertainty.base import UncertaintyMethod, register_method, softmax_probs


@register_method("msp")
class MaxSoftmax(UncertaintyMethod):
    """One deterministic forward pass; uncertainty is one minus the winning class probability."""

    def training_key(self) -> str:
        return "ce"  # plain cross-entropy on the plain U-Net, as mcdropout

    def predict(self, model: UNet, x: Tensor) -> tuple[Tensor, Tensor]:
        probs = softmax_probs(model(x))
        return probs, 1.0 - probs.max(dim=1).values
