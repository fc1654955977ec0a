"""histoclass: transfer-learning image classifiers for histology and microscopy.

Every verb of the command line is a function here, taking its config or the config's fields as
keywords (``histoclass.evaluate(model="runs/blood", data="data/test")``); ``load(path)`` gives a
predictor for a run directory or an exported model. Jobs are imported when called:
``histoclass.load("model.onnx")`` needs no torch.
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

from histoclass.verbs import VERBS, run_verb

__version__ = "0.1.0"

_EXPORTS = {
    "load": "histoclass.deploy.engines",
    "Predictor": "histoclass.inference.predictor",
    "Config": "histoclass.config",
    "build_config": "histoclass.config",
    "HistoclassError": "histoclass.errors",
    "create_model": "histoclass.models.factory",
    "read_source": "histoclass.data.sources",
    "check_source": "histoclass.data.checks",
}
#: Python names of the verbs (``histoclass.check_data`` for ``histoclass check-data``), from the verb table.
_VERBS = {name.replace("-", "_"): name for name in VERBS}

__all__ = [*_EXPORTS, *_VERBS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _VERBS:
        return partial(run_verb, _VERBS[name])
    raise AttributeError(f"module 'histoclass' has no attribute {name!r}")
