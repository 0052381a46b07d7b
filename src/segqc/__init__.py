"""segqc: predict when a medical image segmentation has failed.

An implementation of DeVries & Taylor, "Leveraging Uncertainty Estimates for Predicting
Segmentation Quality" (2018): a segmentation network outputs a mask and a per-pixel uncertainty
map; a quality network regresses the Jaccard index of the segmentation from (image, mask, map).
"""

from __future__ import annotations

__version__ = "0.1.0"

from segqc.errors import BundleError, DataError, NotFittedError, SegQCError, UnknownNameError  # noqa: E402

__all__ = [
    "__version__",
    "BundleError",
    "DataError",
    "NotFittedError",
    "SegQCError",
    "UnknownNameError",
]
