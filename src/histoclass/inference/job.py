"""The predict job: image files, folders (recursive) or a CSV of ids -> predictions CSV.

Columns: ``id, label, confidence, prob_<class>...``; ``--columns id,label`` gives a Kaggle submission.
Unreadable images get an empty label and are listed on stderr; they never stop the run.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoclass.atomic import write_csv
from histoclass.console import console
from histoclass.data.images import is_image_file
from histoclass.data.records import ImageRecords
from histoclass.errors import HistoclassError
from histoclass.inference.predictor import Predictor, load

__all__ = ["Predictions", "collect_inputs", "predict", "run_predictions", "write_predictions_csv"]


@dataclass
class Predictions:
    """Per-image results in input order; rows with an error have NaN probabilities."""

    ids: list[str]
    probabilities: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)


def _csv_inputs(path: Path, image_dir: str | None, id_column: str) -> tuple[list[str], list[Path | None]]:
    from histoclass.data.sources import index_images

    folder = Path(image_dir) if image_dir else path.parent
    if not folder.is_dir():
        raise HistoclassError(f"--image-dir: no such folder '{folder}'; pass the folder holding the images")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if id_column not in (reader.fieldnames or []):
            raise HistoclassError(f"CSV '{path}' has no column '{id_column}'; pass --id-column NAME")
        ids = [row[id_column].strip() for row in reader]
    index = index_images(folder)
    return ids, [index.get(i) or index.get(Path(i).with_suffix("").as_posix()) for i in ids]


def collect_inputs(inputs: list[str], image_dir: str | None = None, id_column: str = "id") -> tuple[list[str], list]:
    """Ids and paths for files, folders (ids relative to the folder) and CSVs of ids (None: not found)."""
    ids: list[str] = []
    paths: list[Path | None] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            ids += [p.relative_to(path).as_posix() for p in found]
            paths += found
        elif path.suffix.lower() == ".csv" and path.is_file():
            csv_ids, csv_paths = _csv_inputs(path, image_dir, id_column)
            ids += csv_ids
            paths += csv_paths
        elif path.is_file():
            ids.append(item)
            paths.append(path)
        else:
            raise HistoclassError(f"no such image, folder or CSV '{item}'")
    if not ids:
        raise HistoclassError(f"no images found in {', '.join(inputs)} (jpeg, png, tif, bmp)")
    return ids, paths


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


def predict(
    model: str | Path,
    inputs: list[str],
    out: str | Path = "predictions.csv",
    image_dir: str | None = None,
    id_column: str = "id",
    columns: list[str] | None = None,
    batch_size: int = 64,
    tta: bool = False,
    compile: bool = False,
) -> Path:
    """Predict every input image with ``model`` and write the CSV ``out``."""
    predictor = load(model, compile)
    ids, paths = collect_inputs(inputs, image_dir, id_column)
    missing = {i: "no image file for this id" for i, p in enumerate(paths) if p is None}
    records = ImageRecords(ids=ids, labels=np.full(len(ids), -1), paths=[p or Path("/nonexistent") for p in paths])
    predictions = run_predictions(predictor, records, batch_size, tta, missing)
    report_errors(predictions)
    path = write_predictions_csv(out, predictions, predictor.labels, columns)
    console.print(f"{len(ids) - len(predictions.errors)} of {len(ids)} images predicted -> [bold]{path}[/]")
    return path
