"""Quality control for a segmentation model from outside segqc (an ONNX file), as f.

:mod:`~segqc.external.spec` (how to feed it), :mod:`~segqc.external.onnx_model` (running it with
onnxruntime, NumPy only) and :mod:`~segqc.external.runner` (a runner answering f's role, so the
uncertainty methods' ``read_out`` works on it). No torch on this path. See ``docs/your-model.md``.
"""

from segqc.external.onnx_model import ExternalOnnxModel
from segqc.external.runner import (
    EXTERNAL_FILE,
    ExternalRunner,
    ExternalSegmenter,
    external_files,
    external_method,
    external_params,
    load_external_segmenter,
)
from segqc.external.spec import ExternalSpec

__all__ = [
    "EXTERNAL_FILE",
    "ExternalOnnxModel",
    "ExternalRunner",
    "ExternalSegmenter",
    "ExternalSpec",
    "external_files",
    "external_method",
    "external_params",
    "load_external_segmenter",
]
