"""histoclass: transfer-learning image classifiers for histology and microscopy.

The jobs are plain functions (``train``, ``evaluate``, ``predict``, ``compare``, ``check_data``) and
``load(path)`` gives a predictor for a run directory or an exported model. Imports are lazy so that
``histoclass.load("model.onnx")`` works in an install without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "histoclass.inference.predictor",
    "Predictor": "histoclass.inference.predictor",
    "Config": "histoclass.config",
    "HistoclassError": "histoclass.errors",
    "train": "histoclass.training.job",
    "evaluate": "histoclass.evaluation.job",
    "predict": "histoclass.inference.job",
    "compare": "histoclass.evaluation.compare",
    "create_model": "histoclass.models.factory",
    "read_source": "histoclass.data.sources",
    "check_source": "histoclass.data.checks",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'histoclass' has no attribute {name!r}")
