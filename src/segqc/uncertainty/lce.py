"""Learned confidence estimates (DeVries & Taylor 2018, "Learning Confidence for Out-of-Distribution
Detection in Neural Networks"), per pixel.

f has one extra output channel ``r``; the confidence is ``c = sigmoid(r)``. In training, the
network may ask for "hints": on a random half of the samples (``b ~ Bernoulli(1/2)``, per image or per
pixel) its prediction is pulled towards the label in proportion to ``1 - c``::

    p' = c p + (1 - c) onehot(y)   where b = 1,   p' = p   where b = 0,
    loss = -mean log p'[y] + lambda * mean(-log c),

with ``p = softmax(u)`` and ``c`` clamped to ``[1e-12, 1 - 1e-12]``. ``lambda`` starts at 0.1 and is
adapted after every step to keep the confidence loss near the budget ``beta``: ``lambda /= 0.99`` if
``mean(-log c) > beta``, else ``lambda /= 1.01`` (the loss of the step uses the value before the
update). At test time ``p = softmax(u)`` and ``z = 1 - c`` in ``[0, 1]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segqc.errors import SegQCError
from segqc.uncertainty.base import NUM_CLASSES, UncertaintyMethod, register_method, softmax_probs

if TYPE_CHECKING:
    from torch import Tensor

EPS = 1e-12


@register_method("lce")
class LearnedConfidence(UncertaintyMethod):
    """Softmax prediction; uncertainty is one minus the learned confidence.

    Args:
        hints: ``"image"``: half of the images of a batch get hints; ``"pixel"``: each pixel
            independently with probability 1/2. Defaults to ``"image"``.
        budget: target ``beta`` of the confidence loss ``mean(-log c)``. Defaults to 0.3.
        lambda_init: starting weight of the confidence loss. Defaults to 0.1.

    The current weight is ``lambda_`` (training state, reset by each new method instance, not saved in
    the bundle; a training's checkpoint keeps it: :meth:`training_state`).
    """

    external_models = None  # needs f's insides, which an external model does not expose

    extra_channels = 1

    def __init__(self, *, hints: str = "image", budget: float = 0.3, lambda_init: float = 0.1) -> None:
        if hints not in ("image", "pixel"):
            raise SegQCError(f"hints must be 'image' or 'pixel', got {hints!r}")
        if budget <= 0 or lambda_init <= 0:
            raise SegQCError(f"budget and lambda_init must be positive, got {budget} and {lambda_init}")
        self.hints = hints
        self.budget = budget
        self.lambda_init = lambda_init
        self._lambda = lambda_init

    @property
    def lambda_(self) -> float:
        return self._lambda

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """One training step's loss; also updates ``lambda_`` (call it once per step)."""
        import torch

        from segqc.networks.functional import hinted_nll

        probs = torch.softmax(output[:, :NUM_CLASSES], dim=1)
        confidence = torch.sigmoid(output[:, NUM_CLASSES])
        hints = self.draw_hints(target)
        conf_loss = -torch.log(confidence.clamp(EPS, 1.0 - EPS)).mean()
        total = hinted_nll(probs, confidence, target, hints, EPS) + self._lambda * conf_loss
        self._lambda /= 0.99 if conf_loss.item() > self.budget else 1.01
        return total

    def training_state(self) -> dict[str, Any]:
        return {"lambda": self._lambda}

    def load_training_state(self, state: dict[str, Any]) -> None:
        value = state.get("lambda") if set(state) == {"lambda"} else None
        # an int when no step has run yet and lambda_init was given as one
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"not a training state of lce: {state!r}")
        self._lambda = value

    def draw_hints(self, target: Tensor) -> Tensor:
        """Which samples get hints: bool ``(N, 1, 1)`` (per image) or ``(N, H, W)`` (per pixel)."""
        import torch

        n, h, w = target.shape
        shape = (n, 1, 1) if self.hints == "image" else (n, h, w)
        return torch.rand(shape, device=target.device) < 0.5

    def head(self, output: Tensor) -> tuple[Tensor, Tensor]:
        return softmax_probs(output), 1.0 - output[:, NUM_CLASSES].sigmoid()
