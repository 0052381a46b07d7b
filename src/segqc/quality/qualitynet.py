"""QualityNet baseline (Robinson et al. 2018): a CNN on the image masked by the prediction, x * y^."""

from __future__ import annotations

from torch import Tensor

from segqc.quality.base import register_predictor
from segqc.quality.cnn import CNNQualityPredictor


@register_predictor("qualitynet")
class QualityNet(CNNQualityPredictor):
    """g(x * y^): 3 channels, the normalised image zeroed outside the predicted mask."""

    in_channels = 3

    def compose(self, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return x * (y > 0)
