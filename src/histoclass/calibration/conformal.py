"""Split conformal prediction sets: the classes whose probability clears a threshold fitted on
held-out images, so the set holds the true class with probability >= the chosen coverage (when new
images come from the same distribution as the calibration images).

The score is 1 - p(true class), MAPIE's "lac" method (smallest sets on average); with ``mondrian``
each class gets its own threshold, so the guarantee holds per class too, which matters for rare
classes. The sets are tested equal to MAPIE's (split) and crepes' (class-conditional) on real
predictions; the arithmetic is kept here because it is two lines and applying it must need nothing
beyond numpy (exported models, the server).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["conformal_thresholds", "prediction_sets", "set_coverage"]


def _quantile(scores: np.ndarray, coverage: float) -> float:
    """The conformal quantile: the ceil((n + 1) * coverage)-th smallest score (1 when n is too small)."""
    n = len(scores)
    rank = math.ceil((n + 1) * coverage)
    return 1.0 if rank > n else float(np.sort(scores)[rank - 1])


def conformal_thresholds(
    probabilities: np.ndarray, labels: np.ndarray, coverage: float, mondrian: bool = False
) -> list[float]:
    """Probability a class needs to enter a set: one threshold, or one per class with ``mondrian``."""
    scores = 1.0 - probabilities[np.arange(len(labels)), labels]
    if not mondrian:
        return [1.0 - _quantile(scores, coverage)]
    return [1.0 - _quantile(scores[labels == k], coverage) for k in range(probabilities.shape[1])]


def prediction_sets(probabilities: np.ndarray, thresholds: list[float]) -> np.ndarray:
    """N x C booleans: class k is in image i's set when its probability reaches k's threshold."""
    return probabilities >= np.asarray(thresholds)[None, :] - 1e-12


def set_coverage(sets: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(share of images whose set holds the true class, mean set size)."""
    return float(sets[np.arange(len(labels)), labels].mean()), float(sets.sum(axis=1).mean())
