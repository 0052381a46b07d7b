"""The quality-predictor interface: fit on (x, y^, z, true Jaccard), predict Jaccard."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from torch import Tensor

from segqc.errors import DataError, NotFittedError
from segqc.registry import Registry
from segqc.types import Graph, QualitySamples


class QualityPredictor(ABC):
    """Predicts the Jaccard index of each segmentation (scikit-learn style).

    ``__init__`` stores keyword settings only; ``fit`` returns ``self`` and sets attributes ending
    in ``_``; ``predict`` returns ``(N,)`` float values in [0, 1].
    """

    name: ClassVar[str]
    #: Whether the predictor reads the uncertainty map z (the baselines do not).
    uses_uncertainty: ClassVar[bool] = False
    #: Whether ``fit`` learns from f's predictions (masks, maps and their true Jaccard). RCA learns only
    #: from reference images with their ground truth, so cross-fitting f changes nothing for it.
    learns_from_predictions: ClassVar[bool] = True
    #: Fitted attributes that are settings chosen in ``fit`` (not weights), recorded with the results
    #: so a reader can see what was chosen and on what (e.g. RCA's ``prior_strength_``).
    chosen_settings: ClassVar[tuple[str, ...]] = ()

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    @abstractmethod
    def fit(self, samples: QualitySamples) -> QualityPredictor: ...

    @abstractmethod
    def predict(self, samples: QualitySamples) -> np.ndarray: ...

    def _check_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit() first")

    def graph(self, example: tuple[Tensor, Tensor, Tensor]) -> Graph:
        """g as an inference graph (uint8 images, uint8 masks, float32 maps -> ``quality``) for export,
        traced on ``example`` inputs of the model's image size.

        Predictors without a network to export (e.g. ``rca``) keep this default.
        """
        raise NotImplementedError(f"the {self.name!r} predictor has no graph to export")

    # Persistence (tensors for safetensors + a JSON-able config); predictors that can be saved override.
    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        raise NotImplementedError(f"{self.name} predictors cannot be saved")

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], config: dict[str, Any]) -> QualityPredictor:
        raise NotImplementedError(f"{cls.name} predictors cannot be loaded")


def check_training_samples(samples: QualitySamples) -> np.ndarray:
    if samples.jaccard is None:
        raise DataError("fitting a quality predictor needs the true Jaccard of each sample")
    if len(samples) < 2:
        raise DataError("fitting a quality predictor needs at least 2 samples")
    return np.asarray(samples.jaccard, dtype=np.float32)


PREDICTORS: Registry[QualityPredictor] = Registry("quality predictor")
register_predictor = PREDICTORS.register


def create_predictor(name: str, **params: Any) -> QualityPredictor:
    return PREDICTORS.create(name, **params)
