"""How well a model's probabilities and prediction sets hold on the evaluated images: ECE and log-loss before
and after temperature scaling, the coverage and size of the sets overall and per class, and (two classes) the
scores at the validation-tuned decision threshold."""

from __future__ import annotations

import numpy as np

from histoclass.calibration.conformal import prediction_sets, set_coverage
from histoclass.calibration.temperature import calibrated_probabilities, negative_log_likelihood
from histoclass.evaluation.metrics import ece_of_perfect_calibration, expected_calibration_error
from histoclass.runs import Calibration

__all__ = ["calibration_figures"]


def calibration_figures(
    view_logits: np.ndarray, y_true: np.ndarray, labels: list[str], calibration: Calibration
) -> dict:
    """The ``calibration`` entry of an evaluation's ``metrics.json``."""
    raw = calibrated_probabilities(view_logits)
    calibrated = calibrated_probabilities(view_logits, calibration.temperature)
    figures: dict = {
        "temperature": calibration.temperature,
        "fitted_on": calibration.fitted_on,
        "ece_uncalibrated": expected_calibration_error(y_true, raw),
        "ece": expected_calibration_error(y_true, calibrated),
        "ece_if_perfect": dict(
            zip(("mean", "p95"), ece_of_perfect_calibration(calibrated), strict=True)
        ),
        "log_loss_uncalibrated": negative_log_likelihood(view_logits, y_true, 1.0),
        "log_loss": negative_log_likelihood(view_logits, y_true, calibration.temperature),
        "coverage_target": calibration.coverage,
        "coverage": None,
        "mean_set_size": None,
        "per_class": {},
        "decision_threshold": None,
    }
    if calibration.has_sets:
        sets = prediction_sets(calibrated, calibration.thresholds)
        figures["coverage"], figures["mean_set_size"] = set_coverage(sets, y_true)
        for k, name in enumerate(labels):
            rows = y_true == k
            if rows.any():
                coverage, size = set_coverage(sets[rows], y_true[rows])
                figures["per_class"][name] = {
                    "coverage": coverage,
                    "mean_set_size": size,
                    "n": int(rows.sum()),
                }
    threshold = calibration.decision_threshold
    if threshold is not None and len(labels) == 2:
        decided = (calibrated[:, 1] >= threshold).astype(np.int64)
        recall = [float((decided[y_true == k] == k).mean()) for k in (0, 1) if (y_true == k).any()]
        figures["decision_threshold"] = {
            "threshold": threshold,
            "accuracy": float((decided == y_true).mean()),
            "balanced_accuracy": float(np.mean(recall)),
        }
    return figures
