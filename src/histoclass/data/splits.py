"""Train/validation splits: stratified, and group-aware so one patient's images never straddle the split."""

from __future__ import annotations

import re

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from histoclass.data.records import ImageRecords
from histoclass.errors import HistoclassError

__all__ = ["fold_numbers", "groups_from_pattern", "split_train_val"]


def groups_from_pattern(ids: list[str], pattern: str) -> list[str]:
    """The first capture group of ``pattern`` searched in each id (a path relative to the dataset)."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise HistoclassError(
            f"--group-by: '{pattern}' is not a valid regular expression ({error})"
        ) from None
    if regex.groups < 1:
        raise HistoclassError(f"--group-by: '{pattern}' needs a capture group, e.g. '_(\\d+)_'")
    groups = []
    for image_id in ids:
        match = regex.search(image_id)
        if match is None or match.group(1) is None:
            raise HistoclassError(
                f"--group-by: '{pattern}' does not match '{image_id}'; every image path must "
                "contain its group"
            )
        groups.append(match.group(1))
    return groups


def split_train_val(
    records: ImageRecords, val_fraction: float, seed: int, groups: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded stratified split; with ``groups``, every group lands wholly on one side.

    The group split takes one fold of a shuffled StratifiedGroupKFold, so class shares stay close to the
    whole set's while groups stay intact.
    """
    labels = records.labels
    if groups is None:
        counts = np.bincount(labels)
        stratify = labels if counts[counts > 0].min() >= 2 else None
        train, val = train_test_split(
            np.arange(len(labels)), test_size=val_fraction, random_state=seed, stratify=stratify
        )
        return np.sort(train), np.sort(val)
    n_groups = len(set(groups))
    folds = max(2, round(1 / val_fraction))
    if n_groups < folds:
        raise HistoclassError(
            f"--group-by: only {n_groups} groups found; need at least {folds} for --val-fraction "
            f"{val_fraction}"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return np.sort(train), np.sort(val)


def fold_numbers(
    labels: np.ndarray, folds: int, seed: int, groups: list[str] | None = None
) -> np.ndarray:
    """Each image's cross-validation fold (0 .. folds-1): stratified, and with ``groups`` every
    group in one fold."""
    if groups is not None and len(set(groups)) < folds:
        raise HistoclassError(
            f"--folds {folds}: only {len(set(groups))} groups found; use fewer folds"
        )
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    if groups is None and smallest < folds:
        raise HistoclassError(
            f"--folds {folds}: a class has only {smallest} training images; use fewer folds"
        )
    splitter = (
        StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        if groups is not None
        else StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    )
    numbers = np.empty(len(labels), dtype=np.int64)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        numbers[held_out] = k
    return numbers
