"""Bootstrap confidence intervals: how much a score could move on another sample of the same kind of data.

When images come in groups (copies of one cell, tiles of one slide, scans of one patient), the groups are
resampled, not the images: copies are not independent evidence, and resampling them as if they were gives
intervals that are far too narrow.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["INTERVAL_METRICS", "bootstrap_intervals"]

INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")


def _scores(y_true: np.ndarray, probabilities: np.ndarray, classes: int) -> dict[str, float]:
    y_pred = probabilities.argmax(axis=1)
    confusion = np.bincount(y_true * classes + y_pred, minlength=classes * classes).reshape(
        classes, classes
    )
    support, predicted, hits = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
    present = support > 0
    recall = hits[present] / support[present]
    precision = np.divide(hits, predicted, out=np.zeros(classes), where=predicted > 0)
    full_recall = np.divide(hits, support, out=np.zeros(classes), where=support > 0)
    f1 = np.divide(
        2 * precision * full_recall,
        precision + full_recall,
        out=np.zeros(classes),
        where=(precision + full_recall) > 0,
    )
    scores = {
        "accuracy": hits.sum() / len(y_true),
        "balanced_accuracy": recall.mean(),
        "macro_f1": f1.mean(),
    }
    scores["roc_auc"] = _auc(y_true, probabilities, classes)
    return scores


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic on average ranks (what scikit-learn computes, 10x
    faster here)."""
    ranks = rankdata(scores)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _auc(y_true: np.ndarray, probabilities: np.ndarray, classes: int) -> float:
    """Binary AUC of class 1, or the macro one-vs-rest AUC over the classes present (as compute_metrics)."""
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if classes == 2:
        return _binary_auc(y_true == 1, probabilities[:, 1])
    return float(np.mean([_binary_auc(y_true == k, probabilities[:, k]) for k in present]))


def bootstrap_intervals(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    groups: list[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile intervals of :data:`INTERVAL_METRICS` over ``resamples`` resamples (of groups,
    when given)."""
    classes = probabilities.shape[1]
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(len(y_true))]
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    draws: dict[str, list[float]] = {name: [] for name in INTERVAL_METRICS}
    for _ in range(resamples):
        chosen = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        for name, value in _scores(y_true[chosen], probabilities[chosen], classes).items():
            draws[name].append(value)
    tail = (1 - level) / 2 * 100
    intervals = {}
    for name, values in draws.items():
        finite = np.asarray(values)[np.isfinite(values)]
        bounds = (
            [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]
            if len(finite)
            else []
        )
        intervals[name] = bounds if len(finite) >= resamples / 2 else None
    return intervals
