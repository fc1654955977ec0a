"""Evaluation metrics from true labels and predicted probabilities (scikit-learn does the arithmetic)."""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

__all__ = [
    "METRIC_KEYS",
    "calibration_bins",
    "compute_metrics",
    "ece_of_perfect_calibration",
    "expected_calibration_error",
    "most_confused",
]

METRIC_KEYS = [
    "n",
    "labels",
    "accuracy",
    "balanced_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_f1",
    "roc_auc",
    "log_loss",
    "ece",
    "per_class",
    "confusion_matrix",
    "calibration",
    "ci95",
    "ci95_resampled",
    "overlap_with_training",
    "metrics_without_overlap",
    "warnings",
    "shift",
]


def calibration_bins(
    y_true: np.ndarray, probabilities: np.ndarray, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: centre, accuracy, mean confidence (NaN when empty) and count."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / counts
    return (edges[:-1] + edges[1:]) / 2, accuracy, mean_confidence, counts


def expected_calibration_error(
    y_true: np.ndarray, probabilities: np.ndarray, bins: int = 15
) -> float:
    """Weighted mean |accuracy - confidence| over ``bins`` equal-width confidence bins.

    Equal to torchmetrics' ``MulticlassCalibrationError(n_bins=15, norm="l1")`` (tested), kept here
    because the reliability plot needs the per-bin figures it does not return, and because
    evaluating an ONNX model needs no torch.
    """
    _, accuracy, confidence, counts = calibration_bins(y_true, probabilities, bins)
    filled = counts > 0
    return float(
        np.sum(counts[filled] * np.abs(accuracy[filled] - confidence[filled])) / counts.sum()
    )


def ece_of_perfect_calibration(
    probabilities: np.ndarray, bins: int = 15, draws: int = 200, seed: int = 0
) -> tuple[float, float]:
    """Mean and 95th percentile of the ECE that a perfectly calibrated model with these
    probabilities would show on this many images: labels drawn from the probabilities themselves
    (consistency resampling, Bröcker & Smith 2007). ECE is biased upwards on few images; a measured
    ECE inside this range cannot be told from perfect."""
    rng = np.random.default_rng(seed)
    cumulative = probabilities.cumsum(axis=1)
    scores = []
    for _ in range(draws):
        drawn = (
            (rng.random((len(probabilities), 1)) > cumulative)
            .sum(axis=1)
            .clip(0, probabilities.shape[1] - 1)
        )
        scores.append(expected_calibration_error(drawn, probabilities, bins))
    return float(np.mean(scores)), float(np.percentile(scores, 95))


def _auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC, or None when only one class is present (it is undefined then)."""
    return float(skm.roc_auc_score(y_true, scores)) if 0 < y_true.sum() < len(y_true) else None


def _overall_auc(y_true: np.ndarray, probabilities: np.ndarray) -> float | None:
    classes = probabilities.shape[1]
    if classes == 2:
        return _auc(y_true == 1, probabilities[:, 1])
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if len(present) == classes:
        return float(skm.roc_auc_score(y_true, probabilities, multi_class="ovr", average="macro"))
    aucs = [_auc(y_true == k, probabilities[:, k]) for k in present]
    return float(np.mean([a for a in aucs if a is not None]))


def compute_metrics(y_true: np.ndarray, probabilities: np.ndarray, labels: list[str]) -> dict:
    """The scores of ``metrics.json``, in :data:`METRIC_KEYS` order (the evaluate job adds the
    checks after)."""
    k = len(labels)
    indices = list(range(k))
    y_pred = probabilities.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=indices, zero_division=0
    )
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "auc": _auc(y_true == i, probabilities[:, i]),
        }
        for i, label in enumerate(labels)
    }
    clipped = np.clip(probabilities, 1e-15, 1.0)
    result = {
        "n": len(y_true),
        "labels": labels,
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float(
            skm.f1_score(y_true, y_pred, labels=indices, average="weighted", zero_division=0)
        ),
        "roc_auc": _overall_auc(y_true, probabilities),
        "log_loss": float(
            skm.log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=indices)
        ),
        "ece": expected_calibration_error(y_true, probabilities),
        "per_class": per_class,
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=indices).tolist(),
    }
    return {
        key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in result.items()
    }


def most_confused(
    confusion: list[list[int]], labels: list[str], top: int = 20
) -> list[tuple[str, str, int]]:
    """(true, predicted, count) for the off-diagonal cells, largest first."""
    pairs = [
        (labels[t], labels[p], count)
        for t, row in enumerate(confusion)
        for p, count in enumerate(row)
        if t != p and count > 0
    ]
    return sorted(pairs, key=lambda pair: -pair[2])[:top]
