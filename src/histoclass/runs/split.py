"""``split.csv``: every training image's id, class, split (train/val) and group, as the run used them."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from histoclass.atomic import write_csv

__all__ = ["SplitRow", "read_split", "write_split"]


@dataclass(frozen=True)
class SplitRow:
    id: str
    label: str
    split: str
    group: str = ""


def write_split(path: str | Path, rows: list[SplitRow]) -> None:
    """Write the split atomically."""
    write_csv(
        path, ["id", "label", "split", "group"], ((r.id, r.label, r.split, r.group) for r in rows)
    )


def read_split(path: str | Path) -> list[SplitRow]:
    """The rows of a ``split.csv`` (runs from before groups were recorded have none)."""
    with open(path, newline="") as handle:
        return [
            SplitRow(r["id"], r["label"], r["split"], r.get("group") or "")
            for r in csv.DictReader(handle)
        ]
