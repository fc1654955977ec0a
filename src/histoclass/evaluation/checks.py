"""Evaluation that checks itself: copies of the evaluated images in the training data, groups for honest
intervals, and a warning when the score disagrees with the run's own validation score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from histoclass.audit.copies import AuditSettings, copies_in_reference, find_copies
from histoclass.console import console
from histoclass.data.records import ImageRecords
from histoclass.data.splits import groups_from_pattern
from histoclass.errors import HistoclassError
from histoclass.runs import RunDir
from histoclass.runs.config_file import read_run_config
from histoclass.runs.records import split_records

__all__ = [
    "DISAGREEMENT_POINTS",
    "OVERLAP_WARNING_SHARE",
    "audit_settings_for",
    "disagreement_warning",
    "evaluation_groups",
    "overlap_with_training",
    "run_behind",
]

#: Accuracy this far (in points) from the run's validation accuracy earns a warning.
DISAGREEMENT_POINTS = 5.0
#: A share of evaluated images with a copy in the training data above this earns a warning.
OVERLAP_WARNING_SHARE = 0.01


def run_behind(model_dir: Path) -> RunDir | None:
    """The training run a model comes from: its own folder, or the run an export folder sits in."""
    for folder in (model_dir, model_dir.parent, model_dir.parent.parent):
        if RunDir(folder).config.is_file():
            return RunDir(folder)
    return None


def audit_settings_for(run: RunDir) -> AuditSettings:
    """The audit the run's ``--group-by auto`` used: its starting backbone (so cached embeddings are
    reused)."""
    model = read_run_config(run).model
    return AuditSettings(model=model.name, weights=model.weights, pretrained=True)


def overlap_with_training(run: RunDir, records: ImageRecords) -> np.ndarray | None:
    """Per evaluated record, whether a copy of it is among the run's training images (None: not checkable)."""
    try:
        training = split_records(run, "train")
        settings = audit_settings_for(run)
        console.print(
            f"Looking for copies of {len(records)} images among the run's {len(training)} training images"
        )
        return copies_in_reference(records, training, settings) >= 0
    except HistoclassError as error:
        console.print(f"[yellow]overlap check skipped: {error}[/]")
        return None


def evaluation_groups(
    records: ImageRecords, group_by: str | None, run: RunDir | None
) -> list[str] | None:
    """Groups of the evaluated images for the intervals: the data's own, a regex, or near-duplicate
    clusters."""
    if records.groups is not None:
        return records.groups
    if not group_by or group_by == "none":
        return None
    if group_by != "auto":
        return groups_from_pattern(records.ids, group_by)
    if run is None or len(records) < 2:
        return None
    try:
        copies = find_copies(records, audit_settings_for(run))
    except HistoclassError as error:
        console.print(f"[yellow]auto groups skipped: {error}[/]")
        return None
    return [f"copies-{cluster}" for cluster in copies.clusters]


def disagreement_warning(accuracy: float, run: RunDir | None) -> str | None:
    """A warning when ``accuracy`` differs from the run's validation accuracy by more than 5 points."""
    if run is None or not run.metrics.is_file():
        return None
    validation = json.loads(run.metrics.read_text()).get("val_accuracy")
    if validation is None or abs(accuracy - validation) * 100 <= DISAGREEMENT_POINTS:
        return None
    return (
        f"accuracy here ({accuracy:.3f}) differs from the run's validation accuracy ({validation:.3f}) by "
        f"{abs(accuracy - validation) * 100:.0f} points. That usually means the validation split "
        "leaked (copies of "
        "one image on both sides) or these images come from another source (scanner, stain, site). "
        "Retrain with "
        "--group-by auto, and compare the data with: histoclass check-data TRAIN --duplicates "
        "--against THIS_DATA"
    )
