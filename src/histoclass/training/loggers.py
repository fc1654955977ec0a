"""Where training logs go: TensorBoard (the default), CSV, MLflow or Weights & Biases, through
Lightning's loggers.

MLflow and W&B read their usual environment (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``,
``WANDB_PROJECT``, ``WANDB_MODE=offline``); without a tracking URI, MLflow writes a SQLite store and
the artifacts beside the runs (``RUNS_DIR/mlflow.db``, ``RUNS_DIR/mlflow-artifacts``). A tracked run
gets its config as parameters, its epochs as metrics and, once finished, its key files as artifacts
and ``tracking.json`` in the run directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from histoclass.atomic import write_json
from histoclass.config import Config
from histoclass.errors import HistoclassError
from histoclass.runs import RunDir
from histoclass.runs.tracking import TRACKING_FILE

__all__ = ["build_logger", "check_logger", "record_tracking", "tracking_uri"]
_EXTRAS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


def check_logger(name: str) -> None:
    """One line before any data is read when the chosen logger's package is missing."""
    if name in _EXTRAS:
        module, extra = _EXTRAS[name]
        try:
            __import__(module)
        except ImportError:
            raise HistoclassError(
                f"--logger {name} needs {module}: pip install 'histoclass[{extra}]'"
            ) from None


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _experiment(config: Config) -> str:
    """MLflow's experiment / W&B's project: the environment's, else the study's (tune), else
    ``histoclass``."""
    runs_dir = Path(config.run.runs_dir).resolve().name
    return runs_dir if runs_dir.startswith("tune-") else "histoclass"


def tracking_uri(config: Config) -> str:
    """MLflow's store: ``MLFLOW_TRACKING_URI``, else a SQLite file beside the runs."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{Path(config.run.runs_dir).resolve() / 'mlflow.db'}"
    )


def build_logger(config: Config, run: RunDir):
    """The Lightning logger ``config.run.logger`` names, with the run's config as its parameters."""
    from lightning.pytorch import loggers

    name = config.run.logger
    if name == "tensorboard":
        logger = loggers.TensorBoardLogger(run.root, name=run.tensorboard, version="")
    elif name == "csv":
        logger = loggers.CSVLogger(run.root, name="csv", version="")
    elif name == "mlflow":
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or _experiment(config)
        local = Path(config.run.runs_dir).resolve() / "mlflow-artifacts"
        logger = loggers.MLFlowLogger(
            experiment_name=experiment,
            run_name=run.root.name,
            tracking_uri=tracking_uri(config),
            artifact_location=None if os.environ.get("MLFLOW_TRACKING_URI") else local.as_uri(),
        )
    else:
        project = os.environ.get("WANDB_PROJECT") or _experiment(config)
        logger = loggers.WandbLogger(project=project, name=run.root.name, save_dir=str(run.root))
    logger.log_hyperparams(_flat(config.model_dump(mode="json")))
    return logger


def record_tracking(logger, config: Config, run: RunDir) -> None:
    """A finished MLflow run: its key files as artifacts, and ``tracking.json`` so evaluate can add to it."""
    from lightning.pytorch.loggers import MLFlowLogger

    if not isinstance(logger, MLFlowLogger):
        return
    for path in run.key_files:
        if path.is_dir():
            logger.experiment.log_artifacts(logger.run_id, str(path), artifact_path=path.name)
        elif path.is_file():
            logger.experiment.log_artifact(logger.run_id, str(path))
    record = {
        "tracking_uri": tracking_uri(config),
        "experiment_id": logger.experiment_id,
        "run_id": logger.run_id,
    }
    write_json(run.root / TRACKING_FILE, {"logger": "mlflow", **record})
