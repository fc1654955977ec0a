"""The images of a run's split, read again from its training data (the ids in ``split.csv``)."""

from __future__ import annotations

import numpy as np

from histoclass.data.records import ImageRecords
from histoclass.data.sources import read_source
from histoclass.errors import HistoclassError
from histoclass.runs.config_file import read_run_config
from histoclass.runs.layout import RunDir
from histoclass.runs.split import read_split

__all__ = ["split_records", "validation_records"]


def split_records(run: RunDir, split: str) -> ImageRecords:
    """The exact ``train`` or ``val`` images of ``run``, labelled as the data labels them."""
    if not run.split.is_file():
        raise HistoclassError(f"'{run.root}' has no {run.split.name}; pass --check-data PATH")
    config = read_run_config(run)
    wanted = {row.id for row in read_split(run.split) if row.split == split}
    try:
        source = read_source(config.data.path, config.data)
    except HistoclassError as error:
        message = f"the run's training data is not readable here ({error}); pass --check-data PATH"
        raise HistoclassError(message) from None
    for records in source.splits.values():
        chosen = [i for i, image_id in enumerate(records.ids) if image_id in wanted]
        if chosen:
            return records.subset(np.asarray(chosen))
    raise HistoclassError(
        f"none of the run's {split} images were found in {config.data.path}; pass --check-data"
    )


def validation_records(run: RunDir) -> ImageRecords:
    """The run's validation images."""
    return split_records(run, "val")
