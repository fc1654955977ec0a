"""The predict job: image files, folders (recursive) or a CSV of ids -> predictions CSV.

Columns: ``id, label, confidence, prob_<class>...``; ``--columns id,label`` gives a Kaggle submission.
Unreadable images get an empty label and are listed on stderr; they never stop the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoclass.atomic import write_csv
from histoclass.config import PredictConfig
from histoclass.console import console
from histoclass.data.inputs import collect_inputs
from histoclass.data.records import ImageRecords
from histoclass.errors import HistoclassError
from histoclass.inference.predictor import Predictor, load

__all__ = ["Predictions", "predict", "report_errors", "run_predictions", "write_predictions_csv"]


@dataclass
class Predictions:
    """Per-image results in input order; rows with an error have NaN probabilities."""

    ids: list[str]
    probabilities: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)


def run_predictions(
    predictor: Predictor,
    records: ImageRecords,
    batch_size: int = 64,
    tta: bool = False,
    missing: dict | None = None,
) -> Predictions:
    """Predict ``records`` with a progress bar; ``missing`` marks records known to have no file."""
    from rich.progress import Progress

    probabilities = np.full((len(records), len(predictor.labels)), np.nan)
    errors = dict(missing or {})
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("Predicting", total=len(records))
        for result in predictor.predict_records(records, batch_size=batch_size, tta=tta):
            probabilities[result.indices] = result.probabilities
            for index, reason in result.errors.items():
                errors.setdefault(index, reason)
            progress.advance(task, len(result.indices) + len(result.errors))
    return Predictions(records.ids, probabilities, errors)


def write_predictions_csv(
    out: str | Path,
    predictions: Predictions,
    labels: list[str],
    columns: list[str] | None = None,
    true_labels: list[str] | None = None,
) -> Path:
    """Write predictions atomically; ``columns`` picks and orders a subset (e.g. ``id,label``)."""
    header = [
        "id",
        *(["true_label"] if true_labels else []),
        "label",
        "confidence",
        *(f"prob_{c}" for c in labels),
    ]
    chosen = columns or header
    unknown = [c for c in chosen if c not in header]
    if unknown:
        raise HistoclassError(f"--columns: unknown column {', '.join(unknown)}; choose from {', '.join(header)}")
    rows = []
    for i, image_id in enumerate(predictions.ids):
        row = {"id": image_id}
        if true_labels:
            row["true_label"] = true_labels[i]
        probs = predictions.probabilities[i]
        if i in predictions.errors:
            row |= {"label": "", "confidence": ""} | {f"prob_{c}": "" for c in labels}
        else:
            best = int(np.argmax(probs))
            row |= {"label": labels[best], "confidence": f"{probs[best]:.9g}"}
            row |= {f"prob_{c}": f"{p:.9g}" for c, p in zip(labels, probs, strict=True)}
        rows.append([row[c] for c in chosen])
    return write_csv(out, chosen, rows)


def report_errors(predictions: Predictions) -> None:
    """List unreadable inputs on stderr."""
    for i, reason in sorted(predictions.errors.items()):
        console.print(f"[yellow]skipped[/] {predictions.ids[i]}: {reason}")


def predict(config: PredictConfig) -> Path:
    """Predict every input image with ``config.model`` and write the CSV ``config.out``."""
    predictor = load(config.model, config.compile)
    ids, paths = collect_inputs(config.inputs, config.image_dir, config.id_column)
    columns = [c.strip() for c in config.columns.split(",")] if config.columns else None
    missing = {i: "no image file for this id" for i, p in enumerate(paths) if p is None}
    records = ImageRecords(ids=ids, labels=np.full(len(ids), -1), paths=[p or Path("/nonexistent") for p in paths])
    predictions = run_predictions(predictor, records, config.batch_size, config.tta, missing)
    report_errors(predictions)
    path = write_predictions_csv(config.out, predictions, predictor.labels, columns)
    console.print(f"{len(ids) - len(predictions.errors)} of {len(ids)} images predicted -> [bold]{path}[/]")
    return path
