"""``history.csv``: one row per epoch, rewritten whole after each one."""

from __future__ import annotations

import csv
from pathlib import Path

from histoclass.atomic import write_csv

__all__ = ["HISTORY_COLUMNS", "read_history", "write_history"]

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


def write_history(path: str | Path, rows: list[dict]) -> None:
    """Write every row (dicts keyed by :data:`HISTORY_COLUMNS`) atomically."""
    write_csv(path, HISTORY_COLUMNS, ([row[c] for c in HISTORY_COLUMNS] for row in rows))
