"""The uncertainty-method interface: how f is built and trained, which graphs it runs, how they are read out.

A method has two sides:

- **torch side** (training and export): ``build`` the network, its training ``loss``, the ``head``
  that turns one raw output into probabilities and a map, and the ``graphs`` that inference runs:
  by default one graph ``f`` (uint8 images -> ``probs``, ``uncertainty``). A stochastic method
  declares the graphs its sampling needs, with the random draws as graph inputs.
- **read-out side** (NumPy, every backend): ``read_out`` calls the graphs through a runner, draws
  any random numbers from a NumPy generator and combines the results. The PyTorch backend and the
  ONNX Runtime backend run the *same* ``read_out``; only the runner differs.

Method modules import torch inside their torch-side hooks only, so the read-out side (and so the ONNX
Runtime backend) runs where torch is not installed.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from segqc.errors import SegQCError
from segqc.registry import Registry
from segqc.types import Graph, Runner

if TYPE_CHECKING:
    from torch import Tensor, nn

    from segqc.networks.unet import UNet

NUM_CLASSES = 2  # background, lesion


class UncertaintyMethod(ABC):
    """A way to get a per-pixel uncertainty map from the U-Net f.

    ``__init__`` takes only keyword settings and stores them (scikit-learn style), so ``get_params``
    records them. Subclasses override ``head`` (deterministic methods) or ``graphs`` and ``read_out``
    (stochastic methods); everything else has a working default.
    """

    name: ClassVar[str]
    #: Output channels of f beyond the two class logits (a variance, a confidence, ...).
    extra_channels: ClassVar[int] = 0
    #: Whether ``read_out`` draws random numbers (then two unseeded read-outs differ).
    stochastic: ClassVar[bool] = False
    #: What ``read_out`` needs of external segmentation models (``segqc.external``), which answer only
    #: the ``f`` graph: ``"one"`` model (``f`` gives ``probs, uncertainty``), ``"members"``, K >= 2
    #: models (``f`` gives ``member_probs (N, K, S, S)``), or ``None``: it needs f's insides (dropout
    #: layers, extra output channels, other graphs) and reads out no external model.
    external_models: ClassVar[str | None] = "one"
    #: Which precomputed outputs of an external model (``segqc.external.predictions``) this method reads
    #: out with ``precomputed_map``: ``"single"`` (one map per image), ``"samples"`` (K maps per image)
    #: or ``None`` (none: its map needs f itself).
    precomputed: ClassVar[str | None] = None

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @classmethod
    def external_params(cls, models: int, params: Mapping[str, Any]) -> dict[str, Any]:
        """The settings that read out ``models`` external models, from the given ``params``: where a
        setting follows from the number of models, it is filled in or checked here (a ``SegQCError``)."""
        return dict(params)

    def precomputed_map(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Precomputed foreground probabilities ``(K, H, W)`` of one image -> its foreground probability
        and uncertainty map ``(H, W)``, float32: the map this method's g was trained on, so the method
        decides how its kind of outputs (``precomputed``) is read."""
        raise SegQCError(f"{self.name!r} computes no uncertainty map from precomputed outputs")

    def check_precomputed(self, maps: np.ndarray) -> None:
        """Raise a ``DataError`` when precomputed outputs ``(K, H, W)`` cannot give this method's map
        (before ``precomputed_map``, so that a batch job can refer that image alone). Default: any K."""
        return None

    def training_key(self) -> str:
        """Methods with the same key train the same f (same network, loss and settings), so an
        experiment trains it once per seed and reads it out each way. Defaults to the method's name."""
        return self.name

    def passes(self) -> float:
        """Cost of one read-out in forward passes of f (1 for a deterministic method)."""
        return 1.0

    # -- torch side --------------------------------------------------------------------------------
    def build(self, *, in_channels: int = 3, base_width: int = 16, dropout: float = 0.5) -> UNet:
        from segqc.networks.unet import UNet

        return UNet(in_channels, NUM_CLASSES + self.extra_channels, base_width, dropout)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Training loss; default is pixel-wise cross-entropy on the class logits.

        Args:
            output: ``(N, 2 + extra_channels, H, W)`` raw network output.
            target: ``(N, H, W)`` int64 ground truth in {0, 1}.
        """
        import torch.nn.functional as F

        return F.cross_entropy(output[:, :NUM_CLASSES], target)

    def training_state(self) -> dict[str, Any]:
        """What :meth:`loss` carries from one step to the next (JSON-able; none by default), saved in
        a training's checkpoint so that a resumed training goes on with it (:mod:`segqc.checkpoint`)."""
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Go on from a :meth:`training_state`; raises ``ValueError`` on one of another method."""
        if state != self.training_state():
            raise ValueError(f"{self.name} keeps no training state, got {state!r}")

    def head(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """One raw output ``(N, 2 + extra, H, W)`` -> ``(probs (N, 2, H, W), uncertainty (N, H, W))``."""
        raise NotImplementedError(f"{self.name} has no deterministic head; it overrides graphs()")

    def graphs(
        self, net: UNet, normalize: nn.Module, images: Tensor
    ) -> tuple[dict[str, Graph], dict[str, Any]]:
        """The graphs ``read_out`` runs, by role, and the JSON-able settings it needs with them.

        Args:
            net: the trained network (eval mode; possibly an inference copy).
            normalize: uint8 ``(N, S, S, 3)`` images -> the network's normalised float input.
            images: example uint8 images, for tracing.
        Returns:
            ``(graphs, layout)``; ``layout`` is stored in an export's manifest and handed back to
            ``read_out`` on every backend.
        """
        from segqc.networks.graphs import HeadGraph

        graph = Graph(HeadGraph(normalize, net, self.head), ["images"], ["probs", "uncertainty"], (images,))
        return {"f": graph}, {}

    # -- read-out side (NumPy, every backend) --------------------------------------------------------
    def read_out(
        self, run: Runner, images: np.ndarray, rng: np.random.Generator, layout: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and map of a batch: ``(N, S, S, 3)`` uint8 -> ``(N, S, S)`` foreground
        probability and ``(N, S, S)`` uncertainty (higher = less sure), float32."""
        probs, uncertainty = run("f", {"images": images})
        return probs[:, 1], uncertainty


METHODS: Registry[UncertaintyMethod] = Registry("uncertainty method")
register_method = METHODS.register


def create_method(name: str, **params: Any) -> UncertaintyMethod:
    return METHODS.create(name, **params)


def softmax_probs(output: Tensor) -> Tensor:
    import torch

    return torch.softmax(output[:, :NUM_CLASSES], dim=1)
