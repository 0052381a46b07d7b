"""Monte Carlo dropout (Gal & Ghahramani 2016; Kendall et al. 2017, "Bayesian SegNet").

Training is plain cross-entropy, as for ``msp``. At test time dropout stays on (BatchNorm stays in
eval mode) and f is sampled ``T`` times::

    p = 1/T sum_t softmax(f_t(x)),    z = H(p) = -sum_c p_c ln p_c  in [0, ln 2].

Where f's dropout layers sit is the ``placement`` setting (p = ``dropout``, 0.5 by default):
``"center"`` (the default) puts them after the bottleneck and the first decoder block only, two layers,
and f is msp's f; ``"segnet"`` puts them after every central encoder and decoder block, as in Bayesian
SegNet (after the two deepest encoder blocks, the bottleneck and the first two decoder blocks, five
layers), and trains its own f, with dropout on those layers during training as well. The paper
(DeVries & Taylor 2018) says: "we apply dropout with p = 0.5 to the central layers of the encoder and
decoder, as in Bayesian SegNet"; ``"segnet"`` is the literal reading, ``"center"`` the narrower one.

Sampling is cheap: everything before the first dropout layer is deterministic, so the graph
``f_encode`` runs once per batch and only ``f_decode`` is repeated, with several samples stacked along
the batch axis. ``f_decode`` takes the dropout masks as inputs (``Bernoulli(1 - p) / (1 - p)``,
element-wise, as ``nn.Dropout`` draws them); ``read_out`` draws them from a NumPy generator, sample
by sample, so the PyTorch and ONNX Runtime backends give the same samples for the same seed, however
many samples are decoded at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from segqc.errors import SegQCError, SettingsError
from segqc.postprocess import entropy, pixel_batch, two_class_map
from segqc.uncertainty.base import (
    NUM_CLASSES,
    Graph,
    Runner,
    UncertaintyMethod,
    register_method,
    softmax_probs,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from segqc.networks.unet import UNet

#: The ``placement`` values, as :data:`segqc.networks.unet.DROPOUT_PLACEMENTS` (not imported: torch-free).
PLACEMENTS = ("center", "segnet")


@register_method("mcdropout")
class MCDropout(UncertaintyMethod):
    """Mean softmax over ``samples`` dropout samples; uncertainty is its entropy (nats).

    Args:
        samples: number of dropout samples T. Defaults to 20.
        max_batch: most images decoded at once (samples x batch images); bounds memory. At least
            one sample of the batch is always decoded at a time. Defaults to about 2**16 pixels per
            decode (``postprocess.pixel_batch``, as ``Segmenter.predict``'s batch): stacked samples
            beyond that outgrow a CPU's caches (``docs/performance.md``, MC dropout); a GPU may gain
            from more.
        placement: where f's dropout layers sit (:data:`segqc.networks.unet.DROPOUT_PLACEMENTS`):
            ``"center"``, after the bottleneck and the first decoder block (f is msp's, trained once
            for both), or ``"segnet"``, after every central encoder and decoder block as in Bayesian
            SegNet (its own f, training key ``"ce-segnet"``). Defaults to ``"center"``.
    """

    external_models = None  # needs f's insides, which an external model does not expose

    stochastic = True
    precomputed = "samples"  # an external stochastic model's samples, <id>_s<k>.npy

    def __init__(self, *, samples: int = 20, max_batch: int | None = None, placement: str = "center") -> None:
        if samples < 1 or (max_batch is not None and max_batch < 1):
            raise SegQCError(
                f"samples and max_batch must be at least 1 (max_batch null: by pixels), "
                f"got {samples} and {max_batch}"
            )
        if placement not in PLACEMENTS:
            raise SettingsError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        self.samples = samples
        self.max_batch = max_batch
        self.placement = placement

    def precomputed_map(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Samples -> the entropy of their mean; one sample gives ``1 - max(p, 1 - p)``, as segqc has
        always read one (the bundles trained so are read the same)."""
        return two_class_map(maps)

    def training_key(self) -> str:
        if self.placement == "center":
            return "ce"  # trains exactly as msp; only the read-out differs
        return f"ce-{self.placement}"  # other dropout layers (active in training too): its own f

    def build(self, *, in_channels: int = 3, base_width: int = 16, dropout: float = 0.5) -> UNet:
        from segqc.networks.unet import UNet

        return UNet(in_channels, NUM_CLASSES, base_width, dropout, dropout_placement=self.placement)

    def passes(self) -> float:
        return float(self.samples)  # an upper bound: the encoder runs once

    def graphs(
        self, net: UNet, normalize: nn.Module, images: Tensor
    ) -> tuple[dict[str, Graph], dict[str, Any]]:
        import torch

        from segqc.networks.graphs import DecodeGraph, EncodeGraph, dropout_layout

        encode = EncodeGraph(normalize, net)
        with torch.inference_mode():
            feats = [f.clone() for f in encode(images)]
        calls = dropout_layout(net, feats)
        names = [f"feat{i}" for i in range(len(feats))]
        masks = [torch.ones(len(images), *shape) for _, shape in calls]
        decode = DecodeGraph(net, len(feats), softmax_probs)
        graphs = {
            "f_encode": Graph(encode, ["images"], names, (images,)),
            "f_decode": Graph(decode, [*names, *(f"mask{i}" for i in range(len(calls)))], ["probs"],
                              (*feats, *masks)),
        }  # fmt: skip
        return graphs, {"dropout": [{"p": p, "shape": shape} for p, shape in calls]}

    def read_out(
        self, run: Runner, images: np.ndarray, rng: np.random.Generator, layout: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(images)
        feats = run("f_encode", {"images": images})  # once: everything before dropout is deterministic
        limit = self.max_batch or pixel_batch(*images.shape[1:3])
        per_chunk = max(1, limit // n)
        total = None
        for start in range(0, self.samples, per_chunk):
            k = min(per_chunk, self.samples - start)
            feed = {f"feat{i}": repeat_batch(f, k) for i, f in enumerate(feats)}
            feed |= sample_masks(rng, layout["dropout"], n, k)
            (probs,) = run("f_decode", feed)  # (k n, 2, S, S), sample-major
            chunk = probs.reshape(k, n, *probs.shape[1:]).sum(0)
            total = chunk if total is None else total + chunk
        mean = total / np.float32(self.samples)
        return mean[:, 1], entropy(mean)


def repeat_batch(features: np.ndarray, k: int) -> np.ndarray:
    """``k`` copies of an ``(N, C, H, W)`` feature map along the batch axis, in its own memory order:
    PyTorch's channels-last features stay channels-last (no copy at all for ``k = 1``)."""
    if k == 1:
        return features
    nhwc = features.transpose(0, 2, 3, 1)
    if nhwc.flags.c_contiguous:
        return np.tile(nhwc, (k, 1, 1, 1)).transpose(0, 3, 1, 2)
    return np.tile(features, (k, 1, 1, 1))


def sample_masks(
    rng: np.random.Generator, calls: list[Mapping[str, Any]], n: int, k: int
) -> dict[str, np.ndarray]:
    """The masks of ``k`` samples of ``n`` images for each dropout call, sample-major (row ``t n + i``).

    Drawn sample by sample, then call by call, so the samples do not depend on how many are decoded
    at once: ``max_batch`` changes speed and memory, never the result.
    """
    draws = [[dropout_mask(rng, float(call["p"]), (n, *call["shape"])) for call in calls] for _ in range(k)]
    return {f"mask{i}": np.concatenate([d[i] for d in draws]) for i in range(len(calls))}


def dropout_mask(rng: np.random.Generator, p: float, shape: tuple[int, ...]) -> np.ndarray:
    """A scaled dropout mask, ``Bernoulli(1 - p) / (1 - p)`` element-wise, float32 (as ``nn.Dropout``)."""
    keep = 1.0 - p
    if keep <= 0.0:
        return np.zeros(shape, np.float32)
    return (rng.random(shape, dtype=np.float32) < keep).astype(np.float32) / np.float32(keep)
