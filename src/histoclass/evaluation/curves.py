"""Training curves from ``history.csv``: loss, accuracy, precision, recall, F1 per epoch, phase
boundary marked."""

from __future__ import annotations

from pathlib import Path

from histoclass.evaluation.figures import plt, save_figure

__all__ = ["plot_curves"]

_PANELS = [
    ("Loss", ["train_loss", "val_loss"]),
    ("Accuracy", ["val_accuracy"]),
    ("Precision / recall (macro)", ["val_macro_precision", "val_macro_recall"]),
    ("F1 (macro)", ["val_macro_f1"]),
]


def plot_curves(rows: list[dict[str, str]], out: str | Path) -> Path:
    """Draw the four panels of a run's history into ``out`` (PNG)."""
    epochs = [int(r["epoch"]) for r in rows]
    boundary = next((int(r["epoch"]) - 0.5 for r in rows if r["phase"] == "2"), None)
    figure, axes = plt.subplots(1, len(_PANELS), figsize=(4.2 * len(_PANELS), 3.4))
    for axis, (title, columns) in zip(axes, _PANELS, strict=True):
        for column in columns:
            axis.plot(
                epochs,
                [float(r[column]) for r in rows],
                marker="o",
                ms=3,
                label=column.replace("_", " "),
            )
        if boundary is not None:
            axis.axvline(boundary, color="grey", ls="--", lw=1, label="fine-tuning starts")
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return save_figure(figure, out)
