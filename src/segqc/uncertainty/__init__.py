"""Uncertainty methods: named plug-ins. Adding a method is adding one module to this package."""

from segqc.registry import import_submodules
from segqc.uncertainty.base import METHODS, UncertaintyMethod, create_method, register_method

import_submodules(__name__, __path__)

__all__ = ["METHODS", "UncertaintyMethod", "create_method", "register_method"]
