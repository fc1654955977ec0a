"""The verbs: each is one config class (:mod:`histoclass.config`) and one job function taking it.

The command line (:mod:`histoclass.cli`) and the Python API (``histoclass.evaluate(model=..., data=...)``) are
both made from :data:`VERBS`. Each entry below imports its job where it is called, so that ``--help`` and
ONNX-only installs stay light; the imports are plain ones, followed by any reader or tool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from histoclass import config as configs
from histoclass.config import validate

__all__ = ["VERBS", "Verb", "run_verb"]


@dataclass(frozen=True)
class Verb:
    """A job: its config class and the function that runs it (its docstring's first line is the help)."""

    config: type[BaseModel]
    job: Callable[[Any], Any]

    @property
    def help(self) -> str:
        return (self.job.__doc__ or "").strip().splitlines()[0]


def train(config: configs.Config) -> Any:
    """Train a classifier: check the data, split it, fit, write runs/NAME/."""
    from histoclass.training.job import train

    return train(config)


def tune(config: configs.TuneConfig) -> Any:
    """Search training settings with Optuna on validation: each trial a run, the best linked as
    tune-NAME/best."""
    from histoclass.tuning.job import tune

    return tune(config)


def check_data(config: configs.CheckDataConfig) -> Any:
    """Count images per class and split, report unreadable files and, with --duplicates, near-duplicates."""
    from histoclass.audit.job import check_data

    return check_data(config)


def evaluate(config: configs.EvaluateConfig) -> Any:
    """Score a model on labelled data: metrics, plots, predictions and report.html in eval/."""
    from histoclass.evaluation.job import evaluate

    return evaluate(config)


def predict(config: configs.PredictConfig) -> Any:
    """Predict classes for images: id, label, confidence and one probability per class, as CSV."""
    from histoclass.prediction.job import predict

    return predict(config)


def slide(config: configs.SlideConfig) -> Any:
    """Map whole slides: classify every tissue tile; a tile table, heatmaps, QuPath GeoJSON and a
    report per slide."""
    from histoclass.slides.job import map_slides

    return map_slides(config)


def calibrate(config: configs.CalibrateConfig) -> Any:
    """Re-calibrate a run on local labelled images: temperature and prediction sets, checked on a
    held-out half."""
    from histoclass.evaluation.calibrate import calibrate

    return calibrate(config)


def adapt(config: configs.AdaptConfig) -> Any:
    """Adapt a run to a new source: BatchNorm statistics from its unlabelled images, or fine-tuning
    on --shots."""
    from histoclass.adaptation.job import adapt

    return adapt(config)


def models(config: configs.ModelsConfig) -> Any:
    """List the pathology foundation models --model takes by name: size, embedding, licence, gating."""
    from histoclass.models.catalogue import list_models

    return list_models(config)


def embed(config: configs.EmbedConfig) -> Any:
    """Write a backbone's embedding of every image (.npz, .npy or .parquet), cached for later runs."""
    from histoclass.embeddings.job import embed

    return embed(config)


def compare(config: configs.CompareConfig) -> Any:
    """Compare runs: architecture, size, parameters, time, best epoch and metrics."""
    from histoclass.evaluation.compare import compare

    return compare(config)


def export(config: configs.ExportConfig) -> Any:
    """Export to ONNX, TFLite or TorchScript with its labels and preprocessing, checked against PyTorch."""
    from histoclass.export.job import export

    return export(config)


def serve(config: configs.ServeConfig) -> Any:
    """Serve the Histology Classifier web page and REST API (docs at /docs)."""
    from histoclass.serving.job import serve

    return serve(config)


def bench(config: configs.BenchConfig) -> Any:
    """Measure training and inference speed: compute ceiling, naive pipeline, histoclass's own."""
    from histoclass.benchmark.job import bench

    return bench(config)


#: Command-line name -> verb, in the order ``histoclass --help`` lists them.
VERBS: dict[str, Verb] = {
    "train": Verb(configs.Config, train),
    "tune": Verb(configs.TuneConfig, tune),
    "check-data": Verb(configs.CheckDataConfig, check_data),
    "evaluate": Verb(configs.EvaluateConfig, evaluate),
    "predict": Verb(configs.PredictConfig, predict),
    "slide": Verb(configs.SlideConfig, slide),
    "calibrate": Verb(configs.CalibrateConfig, calibrate),
    "adapt": Verb(configs.AdaptConfig, adapt),
    "models": Verb(configs.ModelsConfig, models),
    "embed": Verb(configs.EmbedConfig, embed),
    "compare": Verb(configs.CompareConfig, compare),
    "export": Verb(configs.ExportConfig, export),
    "serve": Verb(configs.ServeConfig, serve),
    "bench": Verb(configs.BenchConfig, bench),
}


def run_verb(name: str, config: BaseModel | None = None, /, **values: Any) -> Any:
    """Run verb ``name`` with ``config``, or with ``values`` validated into its config (nested for train)."""
    verb = VERBS[name]
    settings = config if config is not None else validate(verb.config, values)
    return verb.job(settings)
