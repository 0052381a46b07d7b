"""Quality predictors: named plug-ins. Adding a predictor is adding one module to this package."""

from segqc.quality.base import PREDICTORS, QualityPredictor, create_predictor, register_predictor
from segqc.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["PREDICTORS", "QualityPredictor", "create_predictor", "register_predictor"]
