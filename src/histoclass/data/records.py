"""Labelled image records: what a data source yields and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from histoclass.data.framing import Framing
from histoclass.data.images import array_to_rgb, load_resized, open_rgb, resize_square

__all__ = ["DataSource", "ImageRecords", "relabel_by_name"]


@dataclass(frozen=True)
class ImageRecords:
    """N images with integer labels, backed either by files (``paths``) or by an in-memory ``array``.

    ``ids`` name each image in reports and CSVs (a path relative to the dataset, a CSV id, or an index);
    ``groups`` (patient, slide, source image) keep related images on one side of a split; ``framing`` is
    the part of each image a model sees (:mod:`histoclass.data.framing`).
    """

    ids: list[str]
    labels: np.ndarray
    paths: list[Path] | None = None
    array: np.ndarray | None = None
    groups: list[str] | None = None
    framing: Framing = "field"

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: np.ndarray | list[int]) -> ImageRecords:
        """The records at ``indices``, in that order."""
        index = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            ids=[self.ids[i] for i in index],
            labels=self.labels[index],
            paths=None if self.paths is None else [self.paths[i] for i in index],
            array=None if self.array is None else self.array[index],
            groups=None if self.groups is None else [self.groups[i] for i in index],
        )

    @staticmethod
    def concatenate(parts: list[ImageRecords]) -> ImageRecords:
        """``parts`` one after the other (all backed by files, or all by arrays of one image shape)."""
        files = all(part.paths is not None for part in parts)
        return ImageRecords(
            ids=[image_id for part in parts for image_id in part.ids],
            labels=np.concatenate([part.labels for part in parts])
            if parts
            else np.zeros(0, np.int64),
            paths=[path for part in parts for path in part.paths] if files else None,
            array=None if files else np.concatenate([part.array for part in parts]),
        )

    def with_groups(self, groups: list[str] | None) -> ImageRecords:
        """The same records with ``groups`` (one per record, or None for none)."""
        return replace(self, groups=groups)

    def framed(self, framing: Framing) -> ImageRecords:
        """The same images as a model with ``framing`` sees them."""
        return replace(self, framing=framing)

    @property
    def framing_key(self) -> str:
        """What cache keys add for the framing: nothing for the whole field (the keys made before)."""
        return "" if self.framing == "field" else f"|{self.framing}"

    def open(self, i: int, size_hint: int | None = None) -> Image.Image:
        """Image ``i`` as RGB (raises OSError/ValueError if its file is unreadable)."""
        if self.array is not None:
            return Image.fromarray(array_to_rgb(self.array[i]))
        assert self.paths is not None
        return open_rgb(self.paths[i], size_hint)

    def load(self, i: int, size: int) -> np.ndarray:
        """Image ``i`` resized to ``size`` x ``size``, uint8 HxWx3."""
        if self.array is not None:
            return resize_square(self.open(i), size, self.framing)
        assert self.paths is not None
        return load_resized(self.paths[i], size, self.framing)

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Images per class index."""
        return np.bincount(self.labels[self.labels >= 0], minlength=num_classes)


@dataclass
class DataSource:
    """A dataset as read from disk: class names and its splits (``train``/``val``/``test``, or ``all``)."""

    name: str
    classes: list[str]
    splits: dict[str, ImageRecords]
    kind: str
    missing: list[tuple[str, str]] = field(default_factory=list)

    def split(self, name: str | None) -> tuple[str, ImageRecords]:
        """The named split; by default ``test``, else ``val``, else everything."""
        from histoclass.errors import HistoclassError

        order = [name] if name else ["test", "val", "all", "train"]
        for candidate in order:
            if candidate in self.splits:
                return candidate, self.splits[candidate]
        raise HistoclassError(
            f"--split: '{name}' not in this dataset; it has {', '.join(sorted(self.splits))}"
        )


def relabel_by_name(
    records: ImageRecords, classes: list[str], labels: list[str], strict: bool = True
) -> ImageRecords:
    """``records`` (labelled with indices into ``classes``) labelled with indices into ``labels`` by
    class name.

    A class the model does not know is an error naming it, or (``strict=False``) leaves every label
    unknown (-1).
    """
    from histoclass.errors import HistoclassError

    unknown = [c for c in classes if c not in labels]
    if unknown and strict:
        raise HistoclassError(
            f"--data has classes the model does not know: {', '.join(unknown)}; the model's classes are "
            f"{', '.join(labels)}"
        )
    if unknown:
        return replace(records, labels=np.full(len(records), -1, dtype=np.int64))
    to_model = np.asarray([labels.index(c) for c in classes], dtype=np.int64)
    return replace(records, labels=to_model[records.labels])
