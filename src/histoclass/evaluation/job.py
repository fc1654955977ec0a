"""The evaluate job: a model on a labelled set -> ``eval/<data-name>/`` with metrics, plots, CSVs and report.

The folder is built under a temporary name and swapped in whole, so an earlier evaluation is never left
half-overwritten.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from histoclass.atomic import write_csv, write_json, write_text
from histoclass.config import DataConfig, EvaluateConfig
from histoclass.console import console
from histoclass.data.records import ImageRecords, relabel_by_name
from histoclass.data.sources import read_source
from histoclass.errors import HistoclassError
from histoclass.evaluation.metrics import METRIC_KEYS, compute_metrics, most_confused
from histoclass.evaluation.plots import plot_confusion, plot_reliability, plot_roc
from histoclass.evaluation.report import gallery_items, render_report
from histoclass.inference.job import report_errors, run_predictions, write_predictions_csv
from histoclass.inference.predictor import Predictor, load
from histoclass.runs import EvalDir, RunDir
from histoclass.runs.config_file import read_run_config

__all__ = ["evaluate", "evaluate_predictor", "print_metrics"]


def _write_outputs(
    folder: EvalDir, metrics: dict, y_true, probabilities, labels: list[str]
) -> list[tuple[str, str, int]]:
    from sklearn.metrics import classification_report

    write_json(folder.metrics, metrics)
    report = classification_report(
        y_true,
        probabilities.argmax(axis=1),
        labels=list(range(len(labels))),
        target_names=labels,
        digits=4,
        zero_division=0,
    )
    write_text(folder.classification_report, report)
    plot_confusion(metrics["confusion_matrix"], labels, folder.confusion_matrix)
    plot_roc(y_true, probabilities, labels, folder.roc)
    plot_reliability(y_true, probabilities, folder.reliability)
    confused = most_confused(metrics["confusion_matrix"], labels)
    write_csv(folder.most_confused, ["true_label", "predicted_label", "count"], confused)
    return confused


def _swap_into_place(built: Path, target: Path) -> None:
    """Replace ``target`` by ``built`` with renames only; the old folder goes only once the new one is in."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    built.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def evaluate_predictor(
    predictor: Predictor,
    records: ImageRecords,
    out_dir: Path,
    data_name: str,
    tta: bool = False,
    batch_size: int = 64,
) -> dict:
    """Predict ``records`` (labels in the model's order), write every output into ``out_dir``, return metrics."""
    labels = predictor.labels
    predictions = run_predictions(predictor, records, batch_size=batch_size, tta=tta)
    report_errors(predictions)
    rows = np.asarray([i for i in range(len(records)) if i not in predictions.errors], dtype=np.int64)
    if len(rows) == 0:
        raise HistoclassError("--data: no readable image to evaluate on")
    y_true, probabilities = records.labels[rows], predictions.probabilities[rows]
    metrics = compute_metrics(y_true, probabilities, labels)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = EvalDir(Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent)))
    try:
        true_names = [labels[k] for k in records.labels]
        write_predictions_csv(building.predictions, predictions, labels, true_labels=true_names)
        confused = _write_outputs(building, metrics, y_true, probabilities, labels)
        gallery = gallery_items(records, y_true, probabilities, rows, labels, top=16)
        render_report(
            building,
            model_folder(predictor),
            predictor.info,
            metrics,
            confused,
            gallery,
            data_name,
            len(predictions.errors),
        )
        _swap_into_place(building.root, out_dir)
    finally:
        shutil.rmtree(building.root, ignore_errors=True)
    return metrics


def print_metrics(metrics: dict) -> None:
    """Headline numbers and the per-class table in the terminal."""
    from rich.table import Table

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.4f}"

    keys = [key for key in METRIC_KEYS if key not in ("n", "labels", "per_class", "confusion_matrix")]
    console.print(f"n = {metrics['n']}  " + "  ".join(f"{k} = {fmt(metrics[k])}" for k in keys))
    table = Table(title="Per class")
    for column in ("class", "precision", "recall", "f1", "auc", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label, row in metrics["per_class"].items():
        table.add_row(
            label,
            fmt(row["precision"]),
            fmt(row["recall"]),
            fmt(row["f1"]),
            fmt(row["auc"]),
            str(row["support"]),
        )
    console.print(table)


def _data_config(config: EvaluateConfig, model_dir: Path) -> DataConfig:
    """How to read ``--data``: the flags, else the run's own CSV settings, else the defaults."""
    run = RunDir(model_dir)
    trained = read_run_config(run).data if run.config.is_file() else DataConfig()
    given = {key: getattr(config, key) for key in ("image_dir", "id_column", "label_column")}
    inherited = {key: getattr(trained, key) for key, value in given.items() if value is None}
    return DataConfig(path=config.data, **{k: v for k, v in given.items() if v is not None}, **inherited)


def model_folder(predictor: Predictor) -> Path:
    """The folder holding the model: a run directory, or an export's folder."""
    return predictor.source if predictor.source.is_dir() else predictor.source.parent


def evaluate(config: EvaluateConfig) -> Path:
    """Score ``config.model`` on ``config.data`` and write ``<model dir>/eval/<data-name>/``; returns that folder."""
    predictor = load(config.model, config.compile)
    model_dir = model_folder(predictor)
    source = read_source(config.data, _data_config(config, model_dir))
    split_name, records = source.split(config.split)
    records = relabel_by_name(records, source.classes, predictor.labels)
    name = source.name if split_name == "all" else f"{source.name}-{split_name}"
    out_dir = RunDir(model_dir).evaluation(f"{name}-tta" if config.tta else name).root
    metrics = evaluate_predictor(
        predictor, records, out_dir, data_name=f"{source.name} ({split_name})", tta=config.tta,
        batch_size=config.batch_size,
    )  # fmt: skip
    print_metrics(metrics)
    console.print(f"Evaluation written to [bold]{out_dir}[/] (open report.html)")
    return out_dir
