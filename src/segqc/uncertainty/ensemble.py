"""Deep ensembles (Lakshminarayanan et al. 2017, "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles").

f is ``K`` U-Nets, each from its own random initialisation, trained together in one module with one
optimiser on the same batches; the loss is the mean of the members' cross-entropies (so each member
gets the gradient of its own loss, scaled by ``1/K``). At test time the graph ``f`` outputs every
member's foreground probability ``p_k`` and the NumPy read-out combines them
(:func:`segqc.postprocess.combine_samples`)::

    p = 1/K sum_k p_k,    z = H(p)                          (map="entropy", in [0, ln 2]), or
                          z = H(p) - 1/K sum_k H(p_k)       (map="mutual_information", Depeweg et al. 2018)

with ``H`` the binary entropy in nats. The mutual information keeps only the members' disagreement
(epistemic uncertainty); both maps read the same trained ensemble.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from segqc.errors import DataError, SegQCError
from segqc.postprocess import SAMPLE_MAPS, combine_samples
from segqc.types import Graph
from segqc.uncertainty.base import NUM_CLASSES, Runner, UncertaintyMethod, register_method

if TYPE_CHECKING:
    from torch import Tensor, nn

    from segqc.networks.unet import UNetEnsemble


def member_probs(output: Tensor) -> Tensor:
    """``(N, K, 2, H, W)`` member logits -> ``(N, K, H, W)`` member foreground probabilities."""
    import torch

    return torch.softmax(output[:, :, :NUM_CLASSES], dim=2)[:, :, 1]


@register_method("ensemble")
class DeepEnsemble(UncertaintyMethod):
    """Mean foreground probability of ``members`` U-Nets; uncertainty is its entropy or the mutual
    information between prediction and member (nats).

    Args:
        members: ensemble size K. Defaults to 5 (the paper's).
        map: ``"entropy"`` (total uncertainty) or ``"mutual_information"`` (the members' disagreement).
            A read-out setting only: both maps share one trained ensemble. Defaults to ``"entropy"``.
    """

    # Its graph gives every member's probabilities: K >= 2 external models answer it, one cannot (its
    # members' outputs can also come as samples, ``--predictions DIR`` with ``<id>_s<k>.npy``).
    external_models = "members"
    precomputed = "samples"

    def __init__(self, *, members: int = 5, map: str = "entropy") -> None:
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise SegQCError(f"members must be an integer of at least 1, got {members!r}")
        if map not in SAMPLE_MAPS:
            raise SegQCError(f"map must be one of {', '.join(SAMPLE_MAPS)}, got {map!r}")
        self.members = members
        self.map = map

    @classmethod
    def external_params(cls, models: int, params: Mapping[str, Any]) -> dict[str, Any]:
        """``members`` is the number of external models: filled in, or refused when it disagrees."""
        out = {**params, "members": params.get("members", models)}
        if out["members"] != models:
            raise SegQCError(
                f"ensemble setting members={out['members']!r} disagrees with the {models} segmentation "
                f"models given; leave members out (it is the number of models) or set members={models}"
            )
        return out

    def precomputed_map(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The members' precomputed outputs ``(K, H, W)`` -> their mean and ``map`` (:func:`combine_samples`).

        ``members`` is not checked against K: every sample of the image is combined, whatever their
        number (the mean and the entropy hold for any K >= 1, the mutual information for K >= 2:
        :meth:`check_precomputed`; a stochastic model's count may vary by image); ``members`` is only
        recorded, as given.
        """
        self.check_precomputed(maps)
        return combine_samples(maps, axis=0, uncertainty=self.map)

    def check_precomputed(self, maps: np.ndarray) -> None:
        """The mutual information of one sample is 0 everywhere (nothing to disagree with): g would read
        that as certainty, so it needs K >= 2 samples."""
        if self.map == "mutual_information" and len(maps) < 2:
            raise DataError(
                f"{len(maps)} sample: map=mutual_information (the samples' disagreement) needs at least 2 "
                "samples; one gives 0 everywhere, which would read as certainty"
            )

    def training_key(self) -> str:
        return f"ensemble-k{self.members}"  # not the map: it does not change training

    def passes(self) -> float:
        return float(self.members)

    # -- torch side --------------------------------------------------------------------------------
    def build(self, *, in_channels: int = 3, base_width: int = 16, dropout: float = 0.5) -> UNetEnsemble:
        from segqc.networks.unet import UNetEnsemble

        return UNetEnsemble(self.members, in_channels, NUM_CLASSES, base_width, dropout)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean over members of each member's pixel-wise cross-entropy; ``output`` is ``(N, K, 2, H, W)``."""
        import torch
        import torch.nn.functional as F

        return torch.stack([F.cross_entropy(output[:, k], target) for k in range(output.shape[1])]).mean()

    def graphs(
        self, net: nn.Module, normalize: nn.Module, images: Tensor
    ) -> tuple[dict[str, Graph], dict[str, Any]]:
        from segqc.networks.graphs import HeadGraph

        graph = Graph(HeadGraph(normalize, net, member_probs), ["images"], ["member_probs"], (images,))
        return {"f": graph}, {"members": self.members}

    # -- read-out side (NumPy, every backend) --------------------------------------------------------
    def read_out(
        self, run: Runner, images: np.ndarray, rng: np.random.Generator, layout: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        (probs,) = run("f", {"images": images})  # (N, K, S, S)
        return combine_samples(probs, axis=1, uncertainty=self.map)
