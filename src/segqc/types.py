"""The data passed between stages. This is the one place their shapes are documented."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn


@dataclass
class SegPrediction:
    """Output of the segmentation network f with an uncertainty method, for N images.

    Attributes:
        probs: ``(N, H, W)`` float32 foreground probability.
        mask: ``(N, H, W)`` uint8 predicted mask in {0, 1} (foreground where ``probs > 0.5``).
        uncertainty: ``(N, H, W)`` float32 uncertainty map z; higher means less sure. Its scale
            depends on the method (e.g. ``1 - max softmax`` in [0, 0.5], entropy in [0, ln 2]).
    """

    probs: np.ndarray
    mask: np.ndarray
    uncertainty: np.ndarray

    def __len__(self) -> int:
        return len(self.mask)


@dataclass
class QualitySamples:
    """Inputs (and, for training, targets) of a quality predictor g.

    Attributes:
        images: ``(N, H, W, 3)`` uint8 RGB images x.
        masks: ``(N, H, W)`` uint8 predicted masks y^.
        uncertainty: ``(N, H, W)`` float32 uncertainty maps z.
        jaccard: ``(N,)`` true Jaccard index of each predicted mask; needed by ``fit``.
        true_masks: ``(N, H, W)`` uint8 ground truth; used by predictors that need references (RCA).
        ids: image ids.
    """

    images: np.ndarray
    masks: np.ndarray
    uncertainty: np.ndarray
    jaccard: np.ndarray | None = None
    true_masks: np.ndarray | None = None
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.masks)

    def subset(self, index: np.ndarray) -> QualitySamples:
        def take(a):
            return None if a is None else a[index]

        ids = None if self.ids is None else [self.ids[i] for i in np.asarray(index)]
        return QualitySamples(
            self.images[index],
            self.masks[index],
            self.uncertainty[index],
            take(self.jaccard),
            take(self.true_masks),
            ids,
        )


#: Runs one of a method's graphs by role on NumPy inputs (by name); returns its outputs in order.
Runner = Callable[[str, Mapping[str, np.ndarray]], list[np.ndarray]]


@dataclass
class Graph:
    """One inference graph of f, as PyTorch runs it and as it is exported to ONNX.

    Attributes:
        module: ``forward(*inputs)`` in the order of ``inputs``; returns a tensor or a tuple in the
            order of ``outputs``.
        inputs: input names; ``images`` is ``(N, S, S, 3)`` uint8. Every input has a batch axis first.
        outputs: output names.
        example: example inputs (tensors, batch first) to trace the graph for export.
    """

    module: nn.Module
    inputs: list[str]
    outputs: list[str]
    example: tuple[Any, ...] = field(repr=False)
