"""Heteroscedastic classifier (Kendall & Gal 2017, "What Uncertainties Do We Need in Bayesian Deep
Learning for Computer Vision?"): aleatoric uncertainty learned as a per-pixel logit noise variance.

f has one extra output channel ``r``; the head predicts a *variance*
``sigma^2 = softplus(r) + 1e-6``, so the noise standard deviation is ``sigma = sqrt(softplus(r) + 1e-6)``
(the epsilon keeps the square root differentiable). The same ``sigma`` scales the noise of both class
logits ``u``. Training loss, with ``eps_t ~ N(0, I)`` drawn independently per sample, pixel and class
channel::

    loss = -mean_pixels log( 1/T sum_t softmax(u + sigma * eps_t)[y] ),    T = samples = 100,

computed stably as ``log T - logsumexp_t log_softmax(u + sigma * eps_t)[y]`` (for two classes as
``log softmax(v)[y] = -softplus(v_other - v_y)``, on the same draws). At test time nothing is
sampled: ``p = softmax(u)`` and ``z = sigma^2`` (>= 0, unbounded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from segqc.errors import SegQCError
from segqc.uncertainty.base import NUM_CLASSES, UncertaintyMethod, register_method, softmax_probs

if TYPE_CHECKING:
    from torch import Tensor

MIN_VARIANCE = 1e-6


def predicted_variance(output: Tensor) -> Tensor:
    """``(N, 3, H, W)`` network output -> ``(N, H, W)`` logit noise variance ``softplus(r) + 1e-6``."""
    import torch.nn.functional as F

    return F.softplus(output[:, NUM_CLASSES]) + MIN_VARIANCE


@register_method("hcnn")
class Heteroscedastic(UncertaintyMethod):
    """Softmax of the mean logits; uncertainty is the learned logit noise variance.

    Args:
        samples: noise samples T per pixel in the training loss. Defaults to 100.
    """

    external_models = None  # needs f's insides, which an external model does not expose

    extra_channels = 1

    def __init__(self, *, samples: int = 100) -> None:
        if samples < 1:
            raise SegQCError(f"samples must be at least 1, got {samples}")
        self.samples = samples

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        import torch

        from segqc.networks.functional import heteroscedastic_nll

        logits = output[:, :NUM_CLASSES]
        noise = torch.randn((self.samples, *logits.shape), dtype=logits.dtype, device=logits.device)
        return heteroscedastic_nll(logits, predicted_variance(output), target, noise)

    def head(self, output: Tensor) -> tuple[Tensor, Tensor]:
        return softmax_probs(output), predicted_variance(output)
