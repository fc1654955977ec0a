"""Evaluation plots: confusion matrix (counts and row-normalised), ROC per class, reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from histoclass.evaluation.figures import plt, save_figure
from histoclass.evaluation.metrics import calibration_bins

__all__ = ["plot_confusion", "plot_reliability", "plot_roc"]


def plot_confusion(confusion: list[list[int]], labels: list[str], out: str | Path) -> Path:
    """Counts beside row-normalised shares (rows: true class, columns: predicted)."""
    counts = np.asarray(confusion, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.55 * len(labels) + 2.5)
    figure, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    for axis, values, title, fmt in (
        (axes[0], counts, "Counts", "{:.0f}"),
        (axes[1], shares, "Row-normalised", "{:.2f}"),
    ):
        axis.imshow(values, cmap="Blues")
        axis.set_title(title)
        axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        axis.set_yticks(range(len(labels)), labels)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        threshold = values.max() / 2 if values.max() else 1
        for (row, col), value in np.ndenumerate(values):
            axis.text(
                col,
                row,
                fmt.format(value),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > threshold else "black",
            )
    return save_figure(figure, out)


def plot_roc(
    y_true: np.ndarray, probabilities: np.ndarray, labels: list[str], out: str | Path
) -> Path:
    """One one-vs-rest ROC curve per class that has both positives and negatives."""
    figure, axis = plt.subplots(figsize=(5.5, 5))
    for k, label in enumerate(labels):
        positive = y_true == k
        if 0 < positive.sum() < len(y_true):
            fpr, tpr, _ = roc_curve(positive, probabilities[:, k])
            axis.plot(fpr, tpr, label=label)
    axis.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title("ROC (one vs rest)")
    axis.legend(fontsize=8)
    return save_figure(figure, out)


def plot_reliability(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    out: str | Path,
    bins: int = 15,
    uncalibrated: np.ndarray | None = None,
) -> Path:
    """Accuracy against confidence per bin: on the diagonal means well calibrated. With ``uncalibrated``
    probabilities, both are drawn: before and after temperature scaling."""
    centers, accuracy, _, _ = calibration_bins(y_true, probabilities, bins)
    figure, axis = plt.subplots(figsize=(5.5, 5))
    if uncalibrated is not None:
        _, before, _, _ = calibration_bins(y_true, uncalibrated, bins)
        axis.plot(
            centers, before, marker="o", color="#b3261e", lw=1.5, label="before temperature scaling"
        )
    label = "accuracy (calibrated)" if uncalibrated is not None else "accuracy"
    axis.bar(
        centers, np.nan_to_num(accuracy), width=1 / bins, edgecolor="black", alpha=0.7, label=label
    )
    axis.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    axis.set_xlabel("confidence")
    axis.set_ylabel("accuracy")
    axis.set_title("Reliability")
    axis.legend(fontsize=8)
    return save_figure(figure, out)
