"""Helpers for the uncertainty tests: read a method out on a bare network, as ``Segmenter.predict`` does."""

from __future__ import annotations

import numpy as np
import torch

from segqc.networks.graphs import Normalize, TorchRunner
from segqc.uncertainty import UncertaintyMethod


def read_out(
    method: UncertaintyMethod, model: torch.nn.Module, images: np.ndarray, seed: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The method's graphs on ``model`` (PyTorch runner) and its NumPy read-out of uint8 ``images``."""
    normalize = Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    graphs, layout = method.graphs(model, normalize, torch.from_numpy(images[:1]))
    return method.read_out(
        TorchRunner(graphs, torch.device("cpu")), images, np.random.default_rng(seed), layout
    )


def random_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
