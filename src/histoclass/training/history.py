"""``history.csv``: one row per epoch. Readable without torch (reports and comparisons use it)."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["HISTORY_COLUMNS", "read_history"]

HISTORY_COLUMNS = [
    "epoch",
    "phase",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_macro_precision",
    "val_macro_recall",
    "val_macro_f1",
    "lr",
    "seconds",
]


def read_history(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``history.csv`` (empty if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
