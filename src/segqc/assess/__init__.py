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
from segqc.assess.lock import OutputInUseError, output_lock
from segqc.assess.outputs import check_output_folder

__all__ = [
    "ERROR_COLUMNS",
    "OUTPUT_DIRS",
    "QUALITY_COLUMNS",
    "Assessment",
    "OutputInUseError",
    "PredictSummary",
    "assess_files",
    "assess_images",
    "check_output_folder",
    "collect_inputs",
    "output_lock",
    "read_input",
    "unique_ids",
    "write_png",
]
