"""Which images train and which validate: the dataset's own split, else a seeded (group-aware) one.

Groups come from a CSV column, a regex over the paths, or ``auto``: the near-duplicate clusters found from the
pixels (:mod:`histoclass.audit`), so copies of one image never straddle the split.
"""

from __future__ import annotations

import numpy as np
from rich.markup import escape

from histoclass.audit.copies import AuditSettings, find_copies
from histoclass.audit.names import slide_hint
from histoclass.config import Config
from histoclass.console import console
from histoclass.data.checks import DataReport
from histoclass.data.records import ImageRecords
from histoclass.data.splits import groups_from_pattern, split_train_val
from histoclass.errors import HistoclassError
from histoclass.runs import RunDir
from histoclass.runs.split import read_split

__all__ = ["AUTO_GROUPS", "auto_groups", "print_split", "recorded_split", "split_for_training"]

#: ``--group-by auto``: groups are the clusters of near-duplicates.
AUTO_GROUPS = "auto"


def auto_groups(records: ImageRecords, config: Config) -> list[str]:
    """Near-duplicate clusters of ``records`` as group names, found with the run's own starting backbone."""
    settings = AuditSettings(model=config.model.name, weights=config.model.weights, pretrained=True)
    copies = find_copies(records, settings)
    sizes = copies.sizes
    console.print(
        f"auto groups: {len(sizes)} clusters from {len(records)} images, largest {int(sizes.max())}"
    )
    if hint := slide_hint(records.ids):
        console.print(f"  {escape(hint)}")
    return [f"copies-{cluster}" for cluster in copies.clusters]


def _pool(report: DataReport) -> ImageRecords:
    clean = report.clean
    train = clean.get("train", clean.get("all"))
    if train is None:
        raise HistoclassError(
            "--data: the dataset has no train split; point --data at the training data"
        )
    return train


def split_for_training(report: DataReport, config: Config) -> tuple[ImageRecords, ImageRecords]:
    """Train and validation records; records carry their groups when the split used them."""
    clean, train = report.clean, _pool(report)
    if "val" in clean and len(clean["val"]):
        return train, clean["val"]
    data = config.data
    if data.group_by == AUTO_GROUPS:
        train = train.with_groups(auto_groups(train, config))
    elif data.group_by:
        train = train.with_groups(groups_from_pattern(train.ids, data.group_by))
    train_index, val_index = split_train_val(
        train, data.val_fraction, config.train.seed, train.groups
    )
    return train.subset(train_index), train.subset(val_index)


def recorded_split(report: DataReport, run: RunDir) -> tuple[ImageRecords, ImageRecords]:
    """The split a run recorded in its ``split.csv`` (for resuming), which the data must still have."""
    rows = read_split(run.split)
    clean = report.clean
    pool = [(name, records) for name, records in clean.items() if name in ("train", "val", "all")]
    where = {
        image_id: (name, i) for name, records in pool for i, image_id in enumerate(records.ids)
    }
    missing = [row.id for row in rows if row.id not in where]
    if missing:
        raise HistoclassError(
            f"--resume: the data behind '{run.root}' changed since the run started ({len(missing)} "
            "image(s) gone, "
            f"e.g. {missing[0]}); start a new run"
        )
    parts = []
    for split in ("train", "val"):
        chosen = [(where[row.id], row.group) for row in rows if row.split == split]
        name = chosen[0][0][0] if chosen else "all"
        records = clean[name].subset(np.asarray([i for (_, i), _ in chosen], dtype=np.int64))
        groups = [group for _, group in chosen]
        parts.append(records.with_groups(groups if any(groups) else None))
    return parts[0], parts[1]


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
    _check_sides(classes, train_counts, val_counts)


def _check_sides(classes: list[str], train_counts, val_counts) -> None:
    """A class with no training image cannot be learnt: refused. One with no validation image is
    unscored: said."""
    untrained = [name for name, n in zip(classes, train_counts, strict=True) if n == 0]
    if untrained:
        listed = ", ".join(untrained[:5]) + (
            f" and {len(untrained) - 5} more" if len(untrained) > 5 else ""
        )
        raise HistoclassError(
            f"the split leaves {len(untrained)} class(es) without a training image ({listed}): "
            "add images to them, merge or drop them, or lower --val-fraction"
        )
    unscored = [name for name, n in zip(classes, val_counts, strict=True) if n == 0]
    if unscored:
        listed = ", ".join(unscored[:5]) + (
            f" and {len(unscored) - 5} more" if len(unscored) > 5 else ""
        )
        console.print(
            f"[yellow]warning:[/] {len(unscored)} class(es) have no validation image ({listed}): "
            "their accuracy is not measured"
        )
