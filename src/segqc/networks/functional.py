"""Pure tensor helpers shared by the uncertainty methods (no registration here).

Shapes: ``N`` images, ``C`` classes, ``T`` samples, ``H x W`` pixels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "dropout_hooks",
    "dropout_modules",
    "enable_dropout",
    "entropy",
    "heteroscedastic_nll",
    "hinted_nll",
]


def entropy(probs: Tensor, dim: int = 1) -> Tensor:
    """Shannon entropy in nats, ``-sum_c p_c log p_c`` with ``0 log 0 = 0``.

    Args:
        probs: class probabilities, e.g. ``(N, C, H, W)``, summing to 1 along ``dim``.
        dim: the class axis. Defaults to 1.
    Returns:
        The entropy with ``dim`` removed, e.g. ``(N, H, W)``, in ``[0, log C]``.
    """
    return (-torch.special.xlogy(probs, probs).sum(dim)).clamp_min(0.0)


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The (multiplicative) dropout layers of ``model`` (``nn.Dropout``, ``nn.Dropout2d``, ...)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


@contextlib.contextmanager
def _dropout_mode(model: nn.Module, train: bool) -> Iterator[list[nn.Module]]:
    layers = dropout_modules(model)
    before = [m.training for m in layers]
    try:
        for m in layers:
            m.train(train)
        yield layers
    finally:
        for m, flag in zip(layers, before, strict=True):
            m.train(flag)


@contextlib.contextmanager
def enable_dropout(model: nn.Module) -> Iterator[None]:
    """Put only the dropout layers in train mode (MC dropout); restore every flag on exit.

    BatchNorm and everything else keep their mode, so running statistics are neither used in batch
    mode nor updated.
    """
    with _dropout_mode(model, True):
        yield


@contextlib.contextmanager
def dropout_hooks(model: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor]) -> Iterator[None]:
    """Replace every dropout layer by ``fn(layer, input)`` for the duration of the block.

    The layers are put in eval mode (identity, so they draw no random numbers) and a forward hook
    returns ``fn(layer, input)`` instead. Hooks and train/eval flags are restored on exit. Used to
    record which dropout layers a forward pass calls, and to apply masks drawn beforehand.
    """
    with _dropout_mode(model, False) as layers:
        handles = [m.register_forward_hook(lambda mod, _inp, out: fn(mod, out)) for m in layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def heteroscedastic_nll(logits: Tensor, variance: Tensor, target: Tensor, noise: Tensor) -> Tensor:
    """Kendall & Gal (2017) loss with logits corrupted by Gaussian noise of per-pixel variance.

    ``loss = -mean_pixels log( 1/T sum_t softmax(logits + sqrt(variance) * noise_t)[target] )``,
    computed as ``log T - logsumexp_t log_softmax(...)[target]`` for stability.

    Args:
        logits: ``(N, C, H, W)`` class logits.
        variance: ``(N, H, W)`` non-negative noise variance (the same for every class channel).
        target: ``(N, H, W)`` int64 classes.
        noise: ``(T, N, C, H, W)`` standard normal draws, one per sample and class channel.
    Returns:
        The scalar loss (mean over pixels).
    """
    if logits.shape[1] == 2:
        # Two classes: log softmax(z)[t] = -softplus(z_other - z_t), on the same draws; the same value
        # up to rounding at less than half the cost (T x N x H x W instead of twice that, no gather).
        sign = 1.0 - 2.0 * target.to(logits.dtype)  # z_other - z_t = sign * (z_1 - z_0)
        margin = (logits[:, 1] - logits[:, 0]) * sign  # (N, H, W)
        spread = (noise[:, :, 1] - noise[:, :, 0]) * sign  # (T, N, H, W)
        log_p = -F.softplus(margin.unsqueeze(0) + variance.sqrt().unsqueeze(0) * spread)
    else:
        noisy = logits.unsqueeze(0) + variance.sqrt()[None, :, None] * noise  # (T, N, C, H, W)
        index = target.unsqueeze(0).unsqueeze(2).expand(noise.shape[0], -1, 1, -1, -1)
        log_p = noisy.log_softmax(dim=2).gather(2, index).squeeze(2)  # (T, N, H, W)
    return (math.log(noise.shape[0]) - torch.logsumexp(log_p, dim=0)).mean()


def hinted_nll(
    probs: Tensor, confidence: Tensor, target: Tensor, hints: Tensor, eps: float = 1e-12
) -> Tensor:
    """DeVries & Taylor (2018) prediction loss with confidence hints.

    Where ``hints`` is true, ``p' = c * p + (1 - c) * onehot(target)``; elsewhere ``p' = p``.
    ``p`` and ``c`` are clamped to ``[eps, 1 - eps]`` first so that the logs stay finite.

    Args:
        probs: ``(N, C, H, W)`` softmax probabilities.
        confidence: ``(N, H, W)`` confidence ``c`` in ``[0, 1]``.
        target: ``(N, H, W)`` int64 classes.
        hints: bool, broadcastable to ``(N, H, W)``.
    Returns:
        ``-mean_pixels log p'[target]``.
    """
    probs = probs.clamp(eps, 1.0 - eps)
    c = torch.where(hints, confidence.clamp(eps, 1.0 - eps), torch.ones_like(confidence)).unsqueeze(1)
    onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    return F.nll_loss(torch.log(c * probs + (1.0 - c) * onehot), target)
