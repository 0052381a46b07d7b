"""Assess images with a loaded model (:func:`segqc.runtime.load_model`): in memory (:func:`assess_images`)
or files to an output folder (:func:`assess_files`, what ``segqc predict`` does)."""

from segqc.assess.assess import Assessment, assess_images
from segqc.assess.folder import (
    ERROR_COLUMNS,
    OUTPUT_DIRS,
    QUALITY_COLUMNS,
    PredictSummary,
    assess_files,
    write_png,
)
from segqc.assess.inputs import collect_inputs, read_input, unique_ids

__all__ = [
    "ERROR_COLUMNS",
    "OUTPUT_DIRS",
    "QUALITY_COLUMNS",
    "Assessment",
    "PredictSummary",
    "assess_files",
    "assess_images",
    "collect_inputs",
    "read_input",
    "unique_ids",
    "write_png",
]
