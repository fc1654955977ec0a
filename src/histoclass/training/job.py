"""The train job: config -> inputs checked -> :func:`histoclass.training.launch.launch` -> a
complete run directory.

Lightning takes seconds to import; a wrong ``--data``, ``--model`` or ``--weights`` is answered before it.
"""

from __future__ import annotations

from pathlib import Path

from histoclass.config import Config
from histoclass.data.sources import read_source
from histoclass.errors import HistoclassError
from histoclass.models.factory import check_model_name
from histoclass.models.hub import resolve_weights_path
from histoclass.runs import RunDir
from histoclass.runs.config_file import read_run_config
from histoclass.training.loggers import check_logger

__all__ = ["train"]


def train(config: Config, callbacks: list | None = None) -> Path:
    """Train a classifier as ``config`` says (or continue the run ``config.run.resume``); returns
    the run directory.

    ``callbacks``: extra Lightning callbacks (the benchmark's timer, say).
    """
    resumed = None
    if config.run.resume:
        resumed = RunDir(Path(config.run.resume))
        config = read_run_config(resumed)
    if not config.data.path:
        raise HistoclassError(
            "--data is required: a class-folder dataset, a labels CSV, an .npz or medmnist:NAME"
        )
    check_logger(config.run.logger)
    source = read_source(config.data.path, config.data)
    check_model_name(config.model.name)
    if config.model.weights:
        resolve_weights_path(config.model.weights)
    from histoclass.training.launch import launch

    return launch(config, source, resumed, callbacks)
