"""The uncertainty-method interface: how f is built, trained and read out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from segqc.networks.unet import UNet
from segqc.registry import Registry

NUM_CLASSES = 2  # background, lesion


class UncertaintyMethod(ABC):
    """A way to get a per-pixel uncertainty map from the U-Net f.

    A method decides the extra output channels of f (``extra_channels``), the training loss, and
    how probabilities and the uncertainty map are read out at test time. ``__init__`` takes only
    keyword settings and stores them (scikit-learn style), so ``get_params`` can record them.
    """

    name: ClassVar[str]
    extra_channels: ClassVar[int] = 0

    def training_key(self) -> str:
        """Methods with the same key train the same f (same network, loss and settings), so an
        experiment trains it once per seed and reads it out each way. Defaults to the method's name."""
        return self.name

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def build(self, *, in_channels: int = 3, base_width: int = 16, dropout: float = 0.5) -> UNet:
        return UNet(in_channels, NUM_CLASSES + self.extra_channels, base_width, dropout)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Training loss; default is pixel-wise cross-entropy on the class logits.

        Args:
            output: ``(N, 2 + extra_channels, H, W)`` raw network output.
            target: ``(N, H, W)`` int64 ground truth in {0, 1}.
        """
        return F.cross_entropy(output[:, :NUM_CLASSES], target)

    @abstractmethod
    def predict(self, model: UNet, x: Tensor) -> tuple[Tensor, Tensor]:
        """Read out f on a batch, with the model in eval mode and gradients off.

        Args:
            model: the trained network, in eval mode.
            x: ``(N, C, H, W)`` normalised images.
        Returns:
            ``(probs, uncertainty)``: ``(N, 2, H, W)`` class probabilities and ``(N, H, W)``
            uncertainty (higher = less sure).
        """


METHODS: Registry[UncertaintyMethod] = Registry("uncertainty method")
register_method = METHODS.register


def create_method(name: str, **params: Any) -> UncertaintyMethod:
    return METHODS.create(name, **params)


def softmax_probs(output: Tensor) -> Tensor:
    return torch.softmax(output[:, :NUM_CLASSES], dim=1)
