"""The run directory: its file names, model description, history, split and config, read and written here.

Torch-free, so every layer above (training, inference, evaluation, export, serving) reads runs the same way.
"""

from histoclass.runs.layout import (
    RUN_DIR_ENV,
    EvalDir,
    ExportDir,
    RunDir,
    SlideDir,
    SlideIndex,
    claim_run_dir,
    create_run_dir,
)
from histoclass.runs.model_info import Calibration, ModelInfo, read_labels, write_labels
from histoclass.runs.study import StudyDir

__all__ = [
    "RUN_DIR_ENV",
    "Calibration",
    "EvalDir",
    "ExportDir",
    "ModelInfo",
    "RunDir",
    "SlideDir",
    "SlideIndex",
    "StudyDir",
    "claim_run_dir",
    "create_run_dir",
    "read_labels",
    "write_labels",
]
