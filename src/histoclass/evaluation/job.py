"""The evaluate job: a model on a labelled set -> ``eval/<data-name>/`` with metrics, plots, CSVs and report.

The folder is built under a temporary name and swapped in whole, so an earlier evaluation is never left
half-overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoclass.atomic import (
    building_folder,
    replace_folder,
    require_writable,
    write_csv,
    write_json,
    write_text,
)
from histoclass.calibration.temperature import calibrated_probabilities
from histoclass.config import DataConfig, EvaluateConfig
from histoclass.console import console
from histoclass.data.records import ImageRecords, relabel_by_name
from histoclass.data.sources import read_source
from histoclass.deploy import open_predictor
from histoclass.errors import HistoclassError
from histoclass.evaluation.calibration_report import calibration_figures
from histoclass.evaluation.checks import (
    OVERLAP_WARNING_SHARE,
    disagreement_warning,
    evaluation_groups,
    overlap_with_training,
    run_behind,
)
from histoclass.evaluation.intervals import INTERVAL_METRICS, bootstrap_intervals
from histoclass.evaluation.metrics import METRIC_KEYS, compute_metrics, most_confused
from histoclass.evaluation.plots import plot_confusion, plot_reliability, plot_roc
from histoclass.evaluation.report import gallery_items, render_report
from histoclass.inference.predictor import Predictor
from histoclass.prediction.batch import (
    Predictions,
    report_errors,
    report_shift,
    run_predictions,
    write_predictions_csv,
)
from histoclass.runs import EvalDir, RunDir
from histoclass.runs.config_file import read_run_config
from histoclass.runs.tracking import log_evaluation
from histoclass.shift.verdict import unlike_share

__all__ = ["SelfChecks", "evaluate", "evaluate_predictor", "print_metrics"]


def _write_outputs(
    folder: EvalDir,
    metrics: dict,
    y_true,
    probabilities,
    labels: list[str],
    uncalibrated: np.ndarray,
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
    plot_reliability(y_true, probabilities, folder.reliability, uncalibrated=uncalibrated)
    confused = most_confused(metrics["confusion_matrix"], labels)
    write_csv(folder.most_confused, ["true_label", "predicted_label", "count"], confused)
    return confused


@dataclass
class SelfChecks:
    """What the evaluation found about itself: copies in the training data, groups, the run it comes from."""

    run: RunDir | None = None
    overlap: np.ndarray | None = None
    groups: list[str] | None = None


def _headline(y_true: np.ndarray, probabilities: np.ndarray, labels: list[str]) -> dict:
    metrics = compute_metrics(y_true, probabilities, labels)
    return {key: metrics[key] for key in ("n", *INTERVAL_METRICS, "log_loss", "ece")}


def _judged(
    metrics: dict, y_true, probabilities, labels: list[str], rows: np.ndarray, checks: SelfChecks
) -> dict:
    """``metrics`` with intervals, the overlap with the training data and the warnings they call for."""
    groups = None if checks.groups is None else [checks.groups[i] for i in rows]
    metrics["ci95"] = bootstrap_intervals(y_true, probabilities, groups)
    metrics["ci95_resampled"] = "groups" if groups is not None else "images"
    warnings = []
    metrics["overlap_with_training"] = metrics["metrics_without_overlap"] = None
    if checks.overlap is not None:
        copied = checks.overlap[rows]
        share = float(copied.mean())
        metrics["overlap_with_training"] = {"n": int(copied.sum()), "share": share}
        if copied.any() and not copied.all():
            metrics["metrics_without_overlap"] = _headline(
                y_true[~copied], probabilities[~copied], labels
            )
        if share > OVERLAP_WARNING_SHARE:
            warnings.append(
                f"{int(copied.sum())} of {len(rows)} images ({share:.0%}) have a near-copy among "
                "the run's training "
                "images: these scores are inflated; metrics_without_overlap holds the scores without them"
            )
    disagreement = disagreement_warning(metrics["accuracy"], checks.run)
    if disagreement:
        warnings.append(disagreement)
    metrics["warnings"] = warnings
    return metrics


def _shift_summary(predictions: Predictions, predictor: Predictor, rows: np.ndarray) -> dict | None:
    """The share of images unlike the training data, its verdict (printed) and the mean shift score."""
    if predictions.shift is None:
        return None
    verdict = report_shift(predictions, predictor)
    return {
        "unlike_training": unlike_share(predictions.unlike[rows]),
        "mean_score": float(np.mean(predictions.shift[rows])),
        "threshold": predictor.shift.reference.threshold,
        "verdict": verdict,
    }


def evaluate_predictor(
    predictor: Predictor,
    records: ImageRecords,
    out_dir: Path,
    data_name: str,
    tta: bool = False,
    batch_size: int = 64,
    checks: SelfChecks | None = None,
) -> dict:
    """Predict ``records`` (labels in the model's order), write every output into ``out_dir``,
    return metrics."""
    labels = predictor.labels
    predictions = run_predictions(predictor, records, batch_size=batch_size, tta=tta)
    report_errors(predictions)
    rows = np.asarray(
        [i for i in range(len(records)) if i not in predictions.errors], dtype=np.int64
    )
    if len(rows) == 0:
        raise HistoclassError("--data: no readable image to evaluate on")
    y_true, probabilities, view_logits = (
        records.labels[rows],
        predictions.probabilities[rows],
        predictions.view_logits[rows],
    )
    metrics = compute_metrics(y_true, probabilities, labels)
    metrics["calibration"] = calibration_figures(
        view_logits, y_true, labels, predictor.info.calibration
    )
    metrics = _judged(metrics, y_true, probabilities, labels, rows, checks or SelfChecks())
    metrics["shift"] = _shift_summary(predictions, predictor, rows)
    with building_folder(out_dir.parent, f".{out_dir.name}.") as folder:
        building = EvalDir(folder)
        true_names = [labels[k] for k in records.labels]
        write_predictions_csv(building.predictions, predictions, labels, true_labels=true_names)
        uncalibrated = calibrated_probabilities(view_logits)
        confused = _write_outputs(building, metrics, y_true, probabilities, labels, uncalibrated)
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
        replace_folder(building.root, out_dir)
    return metrics


def print_metrics(metrics: dict) -> None:
    """Headline numbers and the per-class table in the terminal."""
    from rich.table import Table

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.4f}"

    keys = [key for key in METRIC_KEYS if isinstance(metrics.get(key), float)]
    console.print(f"n = {metrics['n']}  " + "  ".join(f"{k} = {fmt(metrics[k])}" for k in keys))
    resampled = metrics["ci95_resampled"]
    intervals = [
        f"{k} [{v[0]:.3f}, {v[1]:.3f}]" for k, v in metrics["ci95"].items() if v is not None
    ]
    console.print(f"95% intervals (bootstrap over {resampled}): " + ", ".join(intervals))
    calibration = metrics["calibration"]
    perfect = calibration["ece_if_perfect"]
    console.print(
        f"calibration: temperature {calibration['temperature']:.2f}; ECE "
        f"{calibration['ece_uncalibrated']:.3f} "
        f"-> {calibration['ece']:.3f} (a perfectly calibrated model would show {perfect['mean']:.3f}, up to "
        f"{perfect['p95']:.3f}, on {metrics['n']} images); log loss "
        f"{calibration['log_loss_uncalibrated']:.3f} "
        f"-> {calibration['log_loss']:.3f}"
    )
    if calibration["coverage"] is not None:
        console.print(
            f"prediction sets (target coverage {calibration['coverage_target']:.0%}): coverage "
            f"{calibration['coverage']:.1%}, mean set size {calibration['mean_set_size']:.2f}"
        )
    if metrics["overlap_with_training"] is not None:
        overlap = metrics["overlap_with_training"]
        console.print(
            f"copies among the run's training images: {overlap['n']} ({overlap['share']:.1%})"
        )
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
    for warning in metrics["warnings"]:
        console.print(f"[bold red]warning:[/] {warning}")


def _data_config(config: EvaluateConfig, model_dir: Path) -> DataConfig:
    """How to read ``--data``: the flags, else the run's own CSV settings, else the defaults."""
    run = RunDir(model_dir)
    trained = read_run_config(run).data if run.config.is_file() else DataConfig()
    given = {key: getattr(config, key) for key in ("image_dir", "id_column", "label_column")}
    inherited = {key: getattr(trained, key) for key, value in given.items() if value is None}
    return DataConfig(
        path=config.data, **{k: v for k, v in given.items() if v is not None}, **inherited
    )


def model_folder(predictor: Predictor) -> Path:
    """The folder holding the model: a run directory, or an export's folder."""
    return predictor.origin if predictor.origin.is_dir() else predictor.origin.parent


def evaluate(config: EvaluateConfig) -> Path:
    """Score ``config.model`` on ``config.data`` and write ``<model dir>/eval/<data-name>/``;
    returns that folder."""
    given = Path(config.model)
    require_writable(given if given.is_dir() else given.parent, "eval/")  # before the model loads
    predictor = open_predictor(config.model, config.engine, config.compile)
    model_dir = model_folder(predictor)
    source = read_source(config.data, _data_config(config, model_dir))
    split_name, records = source.split(config.split)
    records = relabel_by_name(records, source.classes, predictor.labels)
    name = source.name if split_name == "all" else f"{source.name}-{split_name}"
    out_dir = RunDir(model_dir).evaluation(name if config.tta else f"{name}-no-tta").root
    run = run_behind(model_dir)
    checks = SelfChecks(
        run=run,
        overlap=overlap_with_training(run, records)
        if run is not None and config.overlap_check
        else None,
        groups=evaluation_groups(records, config.group_by, run),
    )
    metrics = evaluate_predictor(
        predictor,
        records,
        out_dir,
        data_name=f"{source.name} ({split_name})",
        tta=config.tta,
        batch_size=config.batch_size,
        checks=checks,
    )
    print_metrics(metrics)
    console.print(f"Evaluation written to [bold]{out_dir}[/] (open report.html)")
    if run is not None and (tracked := log_evaluation(run.root, out_dir.name, metrics)):
        console.print(f"Added to the MLflow run {tracked} as eval.{out_dir.name}.*")
    return out_dir
