"""The predict job: image files, folders (recursive) or a CSV of ids -> predictions CSV (see
:mod:`.batch`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoclass.config import PredictConfig
from histoclass.console import console
from histoclass.data.inputs import collect_inputs
from histoclass.data.records import ImageRecords
from histoclass.deploy import open_predictor
from histoclass.errors import HistoclassError
from histoclass.prediction.batch import (
    decide,
    report_errors,
    report_shift,
    resolve_threshold,
    run_predictions,
    write_predictions_csv,
)

__all__ = ["predict"]


def _check_out(out: Path, inputs: list[Path | None]) -> None:
    """The CSV never lands on an input image or a folder."""
    if out.is_dir():
        raise HistoclassError(
            f"--out '{out}' is a folder; name a CSV file, such as {out / 'predictions.csv'}"
        )
    if out.exists() and any(p is not None and p.exists() and p.samefile(out) for p in inputs):
        raise HistoclassError(
            f"--out '{out}' is one of the input images; write the CSV elsewhere (predictions.csv)"
        )


def predict(config: PredictConfig) -> Path:
    """Predict every input image with ``config.model`` and write the CSV ``config.out``."""
    predictor = open_predictor(config.model, config.engine, config.compile)
    threshold = resolve_threshold(predictor, config.threshold)
    ids, paths = collect_inputs(config.inputs, config.image_dir, config.id_column)
    _check_out(Path(config.out), paths)
    columns = [c.strip() for c in config.columns.split(",")] if config.columns else None
    missing = {i: "no image file for this id" for i, p in enumerate(paths) if p is None}
    records = ImageRecords(
        ids=ids, labels=np.full(len(ids), -1), paths=[p or Path("/nonexistent") for p in paths]
    )
    predictions = run_predictions(predictor, records, config.batch_size, config.tta, missing)
    predictions.decisions = decide(predictions.probabilities, threshold)
    report_errors(predictions)
    report_shift(predictions, predictor)
    path = write_predictions_csv(config.out, predictions, predictor.labels, columns)
    console.print(
        f"{len(ids) - len(predictions.errors)} of {len(ids)} images predicted -> [bold]{path}[/]"
    )
    return path
