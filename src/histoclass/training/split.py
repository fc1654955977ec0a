"""Which images train and which validate: the dataset's own split, else a seeded (group-aware) one."""

from __future__ import annotations

from histoclass.config import Config
from histoclass.console import console
from histoclass.data.checks import DataReport
from histoclass.data.records import ImageRecords
from histoclass.data.splits import groups_from_pattern, split_train_val
from histoclass.errors import HistoclassError

__all__ = ["print_split", "split_for_training"]


def split_for_training(report: DataReport, config: Config) -> tuple[ImageRecords, ImageRecords]:
    """Train and validation records; records carry their groups when the split used them."""
    clean = report.clean
    train = clean.get("train", clean.get("all"))
    if train is None:
        raise HistoclassError("--data: the dataset has no train split; point --data at the training data")
    if "val" in clean and len(clean["val"]):
        return train, clean["val"]
    data = config.data
    if data.group_by:
        train = train.with_groups(groups_from_pattern(train.ids, data.group_by))
    train_index, val_index = split_train_val(train, data.val_fraction, config.train.seed, train.groups)
    return train.subset(train_index), train.subset(val_index)


def print_split(classes: list[str], train: ImageRecords, val: ImageRecords) -> None:
    """The split as a table: images per class on each side."""
    from rich.table import Table

    table = Table(title="Split (images per class)")
    for column in ("class", "train", "val"):
        table.add_column(column, justify="left" if column == "class" else "right")
    train_counts, val_counts = train.class_counts(len(classes)), val.class_counts(len(classes))
    for name, n_train, n_val in zip(classes, train_counts, val_counts, strict=True):
        table.add_row(name, str(n_train), str(n_val))
    table.add_row("total", str(len(train)), str(len(val)), style="bold")
    console.print(table)
