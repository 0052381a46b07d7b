"""Inference graphs of f: normalisation of uint8 images, the network, and a method's read-out head.

These are what the PyTorch backend runs and what ``segqc export`` writes as ONNX graphs, so the two
backends compute the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from segqc.data.dataset import to_input
from segqc.networks.functional import dropout_hooks
from segqc.networks.unet import UNet


class Normalize(nn.Module):
    """:func:`segqc.data.dataset.to_input` as a module, its statistics as buffers (they follow
    ``.to(device)`` and are baked into exported graphs).

    The permuted view keeps the channels-last memory layout that the inference copies use.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    def forward(self, images: Tensor) -> Tensor:
        return to_input(images, self.mean, self.std)


class HeadGraph(nn.Module):
    """uint8 images -> the network's raw output -> ``head`` (e.g. probabilities and an uncertainty map)."""

    def __init__(self, normalize: nn.Module, net: nn.Module, head: Callable[[Tensor], tuple[Tensor, ...]]):
        super().__init__()
        self.normalize, self.net, self.head = normalize, net, head

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return self.head(self.net(self.normalize(images)))


class EncodeGraph(nn.Module):
    """The deterministic prefix of f (``UNet.encode``): uint8 images -> skip features and bottleneck."""

    def __init__(self, normalize: nn.Module, net: UNet) -> None:
        super().__init__()
        self.normalize, self.net = normalize, net

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.net.encode(self.normalize(images)))


class DecodeGraph(nn.Module):
    """The rest of f (``UNet.decode``) with its dropout masks as inputs, then ``head``.

    Inputs: the ``n_feats`` features of :class:`EncodeGraph`, then one mask per dropout call of the
    decoder, in call order. A mask multiplies that call's output (``nn.Dropout`` itself is the identity
    here), so ones give the deterministic network and ``Bernoulli(1 - p) / (1 - p)`` draws a sample.
    """

    def __init__(self, net: UNet, n_feats: int, head: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.net, self.n_feats, self.head = net, n_feats, head

    def forward(self, *inputs: Tensor) -> Tensor:
        feats, masks = list(inputs[: self.n_feats]), iter(inputs[self.n_feats :])
        with dropout_hooks(self.net, lambda _layer, out: out * next(masks)):
            return self.head(self.net.decode(feats))


def dropout_layout(net: UNet, feats: Sequence[Tensor]) -> list[tuple[float, list[int]]]:
    """The dropout calls of ``net.decode``, in order: each layer's ``p`` and its per-image output shape.

    Found by decoding one image with dropout off (no random numbers drawn).
    """
    layout: list[tuple[float, list[int]]] = []

    def record(layer: nn.Module, out: Tensor) -> Tensor:
        layout.append((float(layer.p), list(out.shape[1:])))
        return out

    with torch.inference_mode(), dropout_hooks(net, record):
        net.decode([f[:1] for f in feats])
    return layout


class TorchRunner:
    """Runs graphs by role on NumPy inputs with PyTorch (the ``Runner`` of ``UncertaintyMethod.read_out``).

    Args:
        graphs: the graphs by role (``UncertaintyMethod.graphs``).
        device: where their modules live.
    """

    def __init__(self, graphs: dict, device: torch.device) -> None:
        self.graphs, self.device = graphs, device

    def __call__(self, role: str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        graph = self.graphs[role]
        with torch.inference_mode():
            args = [as_tensor(feeds[name]).to(self.device) for name in graph.inputs]
            out = graph.module(*args)
        return [o.float().cpu().numpy() for o in (out if isinstance(out, tuple) else (out,))]


def as_tensor(array: np.ndarray) -> Tensor:
    """``array`` as a tensor sharing its memory and strides (a channels-last feature map stays
    channels-last, so the convolutions need no reordering copy); copied only for negative strides."""
    return torch.from_numpy(array if all(s >= 0 for s in array.strides) else np.ascontiguousarray(array))
