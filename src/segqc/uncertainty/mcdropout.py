"""Monte Carlo dropout (Gal & Ghahramani 2016; Kendall et al. 2017, "Bayesian SegNet").

Training is plain cross-entropy, as for ``msp``. At test time dropout stays on (BatchNorm stays in
eval mode) and f is sampled ``T`` times::

    p = 1/T sum_t softmax(f_t(x)),    z = H(p) = -sum_c p_c ln p_c  in [0, ln 2].

Sampling is cheap: everything before the first dropout layer is deterministic, so ``model.encode``
runs once per batch and only ``model.decode`` is repeated, with several samples stacked along the
batch axis. The dropout masks are drawn beforehand, sample by sample and layer by layer, by the
dropout layers themselves, i.e. in exactly the order a plain loop ``for t in range(T): model(x)``
draws them; so for the same random state both give the same samples (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from segqc.errors import SegQCError
from segqc.networks.unet import UNet
from segqc.uncertainty.base import NUM_CLASSES, UncertaintyMethod, register_method
from segqc.uncertainty.functional import dropout_hooks, enable_dropout, entropy


@register_method("mcdropout")
class MCDropout(UncertaintyMethod):
    """Mean softmax over ``samples`` dropout samples; uncertainty is its entropy (nats).

    Args:
        samples: number of dropout samples T. Defaults to 20.
        max_batch: most images decoded at once (samples x batch images); bounds memory. At least
            one sample is always decoded at a time. On a CPU one sample per decode is fastest
            (``benchmarks/bench_mcdropout.py``: stacked samples outgrow the caches), so the default
            equals ``Segmenter.predict``'s batch size; a GPU may gain from more. Defaults to 32.
    """

    def __init__(self, *, samples: int = 20, max_batch: int = 32) -> None:
        if samples < 1 or max_batch < 1:
            raise SegQCError(f"samples and max_batch must be at least 1, got {samples} and {max_batch}")
        self.samples = samples
        self.max_batch = max_batch

    def training_key(self) -> str:
        return "ce"  # trains exactly as msp; only the read-out differs

    def predict(self, model: UNet, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = sum(probs.sum(0) for probs in self.iter_samples(model, x)) / self.samples
        return mean, entropy(mean)

    def iter_samples(self, model: UNet, x: Tensor) -> Iterator[Tensor]:
        """Yield the softmax of the T dropout samples in chunks of ``(k, N, 2, H, W)``, in sample order."""
        n = x.shape[0]
        feats = model.encode(x)
        layout = _dropout_layout(model, feats)
        per_chunk = max(1, self.max_batch // n)
        for start in range(0, self.samples, per_chunk):
            k = min(per_chunk, self.samples - start)
            masks = iter(_draw_masks(model, layout, k, feats[0]))
            with dropout_hooks(model, lambda _layer, out, masks=masks: out * next(masks)):
                out = model.decode([f.repeat(k, *([1] * (f.dim() - 1))) for f in feats])
            yield torch.softmax(out[:, :NUM_CLASSES], dim=1).unflatten(0, (k, n))


def _dropout_layout(model: UNet, feats: list[Tensor]) -> list[tuple[nn.Module, torch.Size]]:
    """The dropout calls of ``decode`` in order: the layer and the per-image shape it sees.

    Found by decoding one image with dropout off (no random numbers drawn): about 1/(T N) of the work.
    """
    layout: list[tuple[nn.Module, torch.Size]] = []

    def record(layer: nn.Module, out: Tensor) -> Tensor:
        layout.append((layer, out.shape[1:]))
        return out

    with dropout_hooks(model, record):
        model.decode([f[:1] for f in feats])
    return layout


def _draw_masks(
    model: UNet, layout: list[tuple[nn.Module, torch.Size]], k: int, like: Tensor
) -> list[Tensor]:
    """Scaled dropout masks of k samples for a batch like ``like``, one ``(k N, ...)`` tensor per call.

    Drawn sample by sample, call by call, by the layers themselves: the random numbers a plain loop
    ``for t in range(k): model(x)`` would draw, in the same order.
    """
    n = like.shape[0]
    drawn: list[list[Tensor]] = [[] for _ in layout]
    with enable_dropout(model):
        for _ in range(k):
            for masks, (layer, shape) in zip(drawn, layout, strict=True):
                masks.append(layer(like.new_ones((n, *shape))))  # bernoulli(1 - p) / (1 - p)
    return [torch.cat(masks) for masks in drawn]
