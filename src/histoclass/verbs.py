"""The verbs: each is one config class (:mod:`histoclass.config`) and one job function taking it.

The command line (:mod:`histoclass.cli`) and the Python API (``histoclass.evaluate(model=..., data=...)``) are
both made from this table; jobs are imported only when called, so ``--help`` and ONNX-only installs stay light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from histoclass import config as configs
from histoclass.config import validate

__all__ = ["VERBS", "Verb", "run_verb"]


@dataclass(frozen=True)
class Verb:
    """A job: its config class, where its function lives (``module:function``) and one line of help."""

    config: type[BaseModel]
    job: str
    help: str

    def function(self) -> Callable[[Any], Any]:
        module, _, name = self.job.partition(":")
        return getattr(importlib.import_module(module), name)


VERBS: dict[str, Verb] = {
    "train": Verb(
        configs.Config,
        "histoclass.training.job:train",
        "Train a classifier: check the data, split it, fit, write runs/NAME/.",
    ),
    "check-data": Verb(
        configs.CheckDataConfig,
        "histoclass.audit.job:check_data",
        "Count images per class and split, report unreadable files and, with --duplicates, near-duplicates.",
    ),
    "evaluate": Verb(
        configs.EvaluateConfig,
        "histoclass.evaluation.job:evaluate",
        "Score a model on labelled data: metrics, plots, predictions and report.html in eval/.",
    ),
    "predict": Verb(
        configs.PredictConfig,
        "histoclass.inference.job:predict",
        "Predict classes for images: id, label, confidence and one probability per class, as CSV.",
    ),
    "slide": Verb(
        configs.SlideConfig,
        "histoclass.slides.job:map_slides",
        "Map whole slides: classify every tissue tile; a tile table, heatmaps, QuPath GeoJSON and a report per slide.",
    ),
    "calibrate": Verb(
        configs.CalibrateConfig,
        "histoclass.evaluation.calibrate:calibrate",
        "Re-calibrate a run on local labelled images: temperature and prediction sets, checked on a held-out half.",
    ),
    "adapt": Verb(
        configs.AdaptConfig,
        "histoclass.adaptation.job:adapt",
        "Adapt a run to a new source: BatchNorm statistics from its unlabelled images, or fine-tuning on --shots.",
    ),
    "models": Verb(
        configs.ModelsConfig,
        "histoclass.models.catalogue:list_models",
        "List the pathology foundation models --model takes by name: size, embedding, licence, gating.",
    ),
    "embed": Verb(
        configs.EmbedConfig,
        "histoclass.embeddings.job:embed",
        "Write a backbone's embedding of every image (.npz, .npy or .parquet), cached for later runs.",
    ),
    "compare": Verb(
        configs.CompareConfig,
        "histoclass.evaluation.compare:compare",
        "Compare runs: architecture, size, parameters, time, best epoch and metrics.",
    ),
    "export": Verb(
        configs.ExportConfig,
        "histoclass.export.job:export",
        "Export to ONNX, TFLite or TorchScript with its labels and preprocessing, checked against PyTorch.",
    ),
    "serve": Verb(
        configs.ServeConfig,
        "histoclass.serving.job:serve",
        "Serve the Histology Classifier web page and REST API (docs at /docs).",
    ),
    "bench": Verb(
        configs.BenchConfig,
        "histoclass.benchmark.job:bench",
        "Measure training and inference speed: compute ceiling, naive pipeline, histoclass's own.",
    ),
}


def run_verb(name: str, config: BaseModel | None = None, /, **values: Any) -> Any:
    """Run verb ``name`` with ``config``, or with ``values`` validated into its config (nested for train)."""
    verb = VERBS[name]
    settings = config if config is not None else validate(verb.config, values)
    return verb.function()(settings)
