"""Fitting a model's calibration on labelled held-out images: temperature, conformal thresholds and, for two
classes, the decision threshold that maximises balanced accuracy."""

from __future__ import annotations

import numpy as np

from histoclass.calibration.conformal import conformal_thresholds
from histoclass.calibration.temperature import calibrated_probabilities, fit_temperature
from histoclass.runs import Calibration

__all__ = ["best_binary_threshold", "fit_calibration"]


def best_binary_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float | None:
    """The P(class 1) cut-off with the highest balanced accuracy (None unless both classes are present)."""
    if probabilities.shape[1] != 2 or len(np.unique(labels)) < 2:
        return None
    scores = probabilities[:, 1]
    candidates = np.unique(np.concatenate([[0.5], scores]))
    positive, negative = labels == 1, labels == 0
    predicted = scores[None, :] >= candidates[:, None]
    balanced = (predicted[:, positive].mean(axis=1) + (~predicted[:, negative]).mean(axis=1)) / 2
    return float(candidates[int(np.argmax(balanced))])


def fit_calibration(
    view_logits: np.ndarray,
    labels: np.ndarray,
    coverage: float,
    mondrian: bool = False,
    fitted_on: str = "validation split",
) -> Calibration:
    """Temperature first, then the set thresholds and the decision threshold on the calibrated
    probabilities."""
    temperature = fit_temperature(view_logits, labels)
    probabilities = calibrated_probabilities(view_logits, temperature)
    return Calibration(
        temperature=temperature,
        coverage=coverage,
        mondrian=mondrian,
        thresholds=conformal_thresholds(probabilities, labels, coverage, mondrian),
        decision_threshold=best_binary_threshold(probabilities, labels),
        tta=view_logits.shape[1] > 1,
        images=len(labels),
        fitted_on=fitted_on,
    )
