"""Parity: an exported model's probabilities against the PyTorch model's, on the same real images.

The thresholds here gate every conversion: ``export`` refuses a format below them, ``--engine auto`` skips it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from histoclass.config import DataConfig
from histoclass.data.batches import iter_batches
from histoclass.data.records import ImageRecords, relabel_by_name
from histoclass.data.sources import read_source
from histoclass.errors import HistoclassError
from histoclass.inference.predictor import Predictor
from histoclass.runs import ModelInfo, RunDir
from histoclass.runs.records import validation_records

__all__ = [
    "FLOAT_MAX_DIFF",
    "INT8_MIN_AGREEMENT",
    "MIN_AGREEMENT",
    "Parity",
    "load_check_images",
    "measure_parity",
]

#: Top-1 agreement with PyTorch a float conversion needs (exports and the engines ``auto`` picks).
MIN_AGREEMENT = 0.995
#: Largest difference of a probability a float export may show.
FLOAT_MAX_DIFF = 1e-3
#: Top-1 agreement an int8 export needs.
INT8_MIN_AGREEMENT = 0.99


@dataclass
class Parity:
    """How closely two predictors agree on ``images`` images (and, with labels, how accurate each is)."""

    images: int
    max_abs_diff: float
    top1_agreement: float
    reference_accuracy: float | None = None
    exported_accuracy: float | None = None

    def passes(self, min_agreement: float, max_diff: float | None) -> bool:
        return self.top1_agreement >= min_agreement and (
            max_diff is None or self.max_abs_diff <= max_diff
        )

    def as_dict(self) -> dict:
        return asdict(self)


def _accuracy(probabilities: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or (labels < 0).any():
        return None
    return float((probabilities.argmax(axis=1) == labels).mean())


def measure_parity(
    reference: Predictor,
    exported: Predictor,
    pixels: np.ndarray,
    labels: np.ndarray | None,
    batch_size: int = 32,
) -> Parity:
    """Run both predictors on uint8 NHWC ``pixels`` and compare their probabilities."""
    chunks = range(0, len(pixels), batch_size)
    expected = np.concatenate(
        [reference.predict_pixels(pixels[i : i + batch_size]) for i in chunks]
    )
    actual = np.concatenate([exported.predict_pixels(pixels[i : i + batch_size]) for i in chunks])
    return Parity(
        images=len(pixels),
        max_abs_diff=float(np.abs(expected - actual).max()),
        top1_agreement=float((expected.argmax(axis=1) == actual.argmax(axis=1)).mean()),
        reference_accuracy=_accuracy(expected, labels),
        exported_accuracy=_accuracy(actual, labels),
    )


def _check_records(run: Path, check_data: str | None, labels: list[str]) -> ImageRecords:
    """The run's validation images, or ``check_data`` (labels mapped to the model's when the names match)."""
    if check_data is None:
        return validation_records(RunDir(run))
    source = read_source(check_data, DataConfig(path=check_data))
    _, records = source.split(None)
    return relabel_by_name(records, source.classes, labels, strict=False)


def load_check_images(
    run: Path, check_data: str | None, info: ModelInfo, limit: int, seed: int = 0
):
    """Up to ``limit`` readable images (a seeded random sample) as uint8 NHWC, with labels (-1: unknown)."""
    records = _check_records(run, check_data, info.labels).framed(info.framing)
    size = info.image_size
    if len(records) > limit:
        records = records.subset(
            np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False))
        )
    pixels, labels = [], []
    for batch in iter_batches(records, size, batch_size=64):
        pixels.append(batch.pixels)
        labels.append(records.labels[batch.indices])
    if not pixels or sum(len(p) for p in pixels) == 0:
        raise HistoclassError("--check-data: no readable image to check the export on")
    return np.concatenate(pixels), np.concatenate(labels)
