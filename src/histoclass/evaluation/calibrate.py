"""The calibrate job: re-fit a run's temperature and prediction-set thresholds on a lab's own labelled images.

The images are predicted once and split into two halves: the calibration fitted on one half is checked on the
other against the run's current one (the figures printed), then the calibration fitted on all of them is
written into the run; the one it replaces is kept in the run's calibration history.
"""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
from sklearn.model_selection import train_test_split

from histoclass.atomic import require_writable, write_json
from histoclass.calibration.conformal import prediction_sets, set_coverage
from histoclass.calibration.fit import fit_calibration
from histoclass.calibration.temperature import calibrated_probabilities, negative_log_likelihood
from histoclass.config import CalibrateConfig, DataConfig
from histoclass.console import console
from histoclass.data.records import relabel_by_name
from histoclass.data.sources import read_source
from histoclass.deploy import open_predictor
from histoclass.errors import HistoclassError
from histoclass.evaluation.metrics import expected_calibration_error
from histoclass.prediction.batch import run_predictions
from histoclass.runs import Calibration, ModelInfo, RunDir

__all__ = ["MIN_IMAGES", "calibrate"]

#: Fewer images than this give thresholds too coarse to trust.
MIN_IMAGES = 50


def _scores(
    view_logits: np.ndarray, labels: np.ndarray, calibration: Calibration
) -> dict[str, float | None]:
    probabilities = calibrated_probabilities(view_logits, calibration.temperature)
    coverage = size = None
    if calibration.has_sets:
        coverage, size = set_coverage(
            prediction_sets(probabilities, calibration.thresholds), labels
        )
    return {
        "ece": expected_calibration_error(labels, probabilities),
        "log_loss": negative_log_likelihood(view_logits, labels, calibration.temperature),
        "coverage": coverage,
        "mean_set_size": size,
    }


def _print_check(before: dict, after: dict, held_out: int, coverage: float) -> None:
    from rich.table import Table

    table = Table(title=f"On {held_out} held-out local images (target coverage {coverage:.0%})")
    for column in ("", "ECE", "log loss", "coverage", "mean set size"):
        table.add_column(column, justify="left" if not column else "right")
    for name, row in (
        ("before (the run's calibration)", before),
        ("after (re-fitted on the other half)", after),
    ):
        cells = [row["ece"], row["log_loss"], row["coverage"], row["mean_set_size"]]
        table.add_row(name, *("–" if v is None else f"{v:.3f}" for v in cells))
    console.print(table)


def calibrate(config: CalibrateConfig) -> RunDir:
    """Re-calibrate ``config.run`` on ``config.data``; returns the run directory."""
    run = RunDir(config.run)
    if not run.is_trained():
        raise HistoclassError(f"'{config.run}' is not a finished run directory; pass runs/NAME")
    require_writable(run.root, "the new calibration")
    predictor = open_predictor(run.root, "torch", shift=False)
    given = {key: getattr(config, key) for key in ("image_dir", "id_column", "label_column")}
    source = read_source(
        config.data, DataConfig(path=config.data, **{k: v for k, v in given.items() if v})
    )
    if set(source.classes) != set(predictor.labels):
        raise HistoclassError(
            f"--data has classes {', '.join(source.classes)}; the model's are {', '.join(predictor.labels)}: "
            "calibrate on images of the model's classes"
        )
    _, records = source.split(config.split)
    records = relabel_by_name(records, source.classes, predictor.labels)
    if len(records) < MIN_IMAGES:
        raise HistoclassError(
            f"--data: {len(records)} images; calibration needs at least {MIN_IMAGES}"
        )
    predictions = run_predictions(predictor, records, config.batch_size, config.tta)
    rows = np.asarray(
        [i for i in range(len(records)) if i not in predictions.errors], dtype=np.int64
    )
    logits, labels = predictions.view_logits[rows], records.labels[rows]
    fit_half, check_half = train_test_split(
        np.arange(len(rows)), test_size=0.5, random_state=config.seed, stratify=_stratify(labels)
    )
    fitted = fit_calibration(
        logits[fit_half], labels[fit_half], config.coverage, config.mondrian, config.data
    )
    before = _scores(logits[check_half], labels[check_half], predictor.info.calibration)
    after = _scores(logits[check_half], labels[check_half], fitted)
    _print_check(before, after, len(check_half), config.coverage)
    final = fit_calibration(logits, labels, config.coverage, config.mondrian, config.data)
    _record(
        run, predictor.info, final, {"before": before, "after": after, "held_out": len(check_half)}
    )
    console.print(
        f"Calibration of [bold]{run.root}[/] re-fitted on {len(rows)} images (temperature "
        f"{final.temperature:.2f}); "
        f"the previous one is kept in {run.calibration_history.name}"
    )
    return run


def _stratify(labels: np.ndarray) -> np.ndarray | None:
    counts = np.bincount(labels)
    return labels if counts[counts > 0].min() >= 2 else None


def _record(run: RunDir, info: ModelInfo, calibration: Calibration, check: dict) -> None:
    """Append the replaced calibration to the history, then write the new one into the model description."""
    history = (
        json.loads(run.calibration_history.read_text()) if run.calibration_history.is_file() else []
    )
    history.append(
        {
            "replaced_at": datetime.now().isoformat(timespec="seconds"),
            "previous": info.calibration.model_dump(),
            "new": calibration.model_dump(),
            "check_on_held_out_half": check,
        }
    )
    write_json(run.calibration_history, history)
    info.model_copy(update={"calibration": calibration}).save(run.model_info)
