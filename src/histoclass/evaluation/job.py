"""The evaluate job: a model on a labelled set -> ``eval/<data-name>/`` with metrics, plots, CSVs and report.

The folder is built under a temporary name and swapped in whole, so an earlier evaluation is never left
half-overwritten.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from histoclass.atomic import write_csv, write_json, write_text
from histoclass.config import DataConfig
from histoclass.console import console
from histoclass.data.records import ImageRecords
from histoclass.data.sources import read_source
from histoclass.errors import HistoclassError
from histoclass.evaluation.metrics import METRIC_KEYS, compute_metrics, most_confused
from histoclass.evaluation.plots import plot_confusion, plot_reliability, plot_roc
from histoclass.evaluation.report import gallery_items, render_report
from histoclass.inference.job import report_errors, run_predictions, write_predictions_csv
from histoclass.inference.predictor import Predictor, load

__all__ = ["evaluate", "evaluate_predictor", "print_metrics"]


def _map_labels(records: ImageRecords, classes: list[str], labels: list[str]) -> ImageRecords:
    """Re-index the dataset's classes to the model's output order (by name)."""
    unknown = [c for c in classes if c not in labels]
    if unknown:
        raise HistoclassError(
            f"--data has classes the model does not know: {', '.join(unknown)}; the model's classes are "
            f"{', '.join(labels)}"
        )
    to_model = np.asarray([labels.index(c) for c in classes], dtype=np.int64)
    return replace(records, labels=to_model[records.labels])


def _write_outputs(folder: Path, metrics: dict, y_true, probabilities, labels: list[str]) -> list[tuple[str, str, int]]:
    from sklearn.metrics import classification_report

    write_json(folder / "metrics.json", metrics)
    report = classification_report(
        y_true,
        probabilities.argmax(axis=1),
        labels=list(range(len(labels))),
        target_names=labels,
        digits=4,
        zero_division=0,
    )
    write_text(folder / "classification_report.txt", report)
    plot_confusion(metrics["confusion_matrix"], labels, folder / "confusion_matrix.png")
    plot_roc(y_true, probabilities, labels, folder / "roc.png")
    plot_reliability(y_true, probabilities, folder / "reliability.png")
    confused = most_confused(metrics["confusion_matrix"], labels)
    write_csv(folder / "most_confused.csv", ["true_label", "predicted_label", "count"], confused)
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
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        true_names = [labels[k] for k in records.labels]
        write_predictions_csv(building / "predictions.csv", predictions, labels, true_labels=true_names)
        confused = _write_outputs(building, metrics, y_true, probabilities, labels)
        gallery = gallery_items(records, y_true, probabilities, rows, labels, top=16)
        model_dir = predictor.source if predictor.source.is_dir() else predictor.source.parent
        render_report(
            building,
            model_dir,
            predictor.info,
            metrics,
            confused,
            gallery,
            data_name,
            len(predictions.errors),
        )
        _swap_into_place(building, out_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
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


def evaluate(
    model: str | Path,
    data: str,
    split: str | None = None,
    image_dir: str | None = None,
    id_column: str = "id",
    label_column: str = "label",
    tta: bool = False,
    batch_size: int = 64,
    compile: bool = False,
) -> Path:
    """Score ``model`` on ``data`` and write ``<model dir>/eval/<data-name>/``; returns that folder."""
    predictor = load(model, compile)
    config = DataConfig(path=data, image_dir=image_dir, id_column=id_column, label_column=label_column)
    source = read_source(data, config)
    split_name, records = source.split(split)
    records = _map_labels(records, source.classes, predictor.labels)
    name = source.name if split_name == "all" else f"{source.name}-{split_name}"
    model_dir = predictor.source if predictor.source.is_dir() else predictor.source.parent
    out_dir = model_dir / "eval" / (f"{name}-tta" if tta else name)
    metrics = evaluate_predictor(
        predictor, records, out_dir, data_name=f"{source.name} ({split_name})", tta=tta, batch_size=batch_size
    )
    print_metrics(metrics)
    console.print(f"Evaluation written to [bold]{out_dir}[/] (open report.html)")
    return out_dir
