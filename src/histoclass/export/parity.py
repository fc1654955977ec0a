"""Parity: an exported model's probabilities against the PyTorch model's, on the same real images."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from histoclass.inference.predictor import Predictor

__all__ = ["Parity", "measure_parity"]


@dataclass
class Parity:
    """How closely two predictors agree on ``images`` images (and, with labels, how accurate each is)."""

    images: int
    max_abs_diff: float
    top1_agreement: float
    reference_accuracy: float | None = None
    exported_accuracy: float | None = None

    def passes(self, min_agreement: float, max_diff: float | None) -> bool:
        return self.top1_agreement >= min_agreement and (max_diff is None or self.max_abs_diff <= max_diff)

    def as_dict(self) -> dict:
        return asdict(self)


def _accuracy(probabilities: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or (labels < 0).any():
        return None
    return float((probabilities.argmax(axis=1) == labels).mean())


def measure_parity(
    reference: Predictor, exported: Predictor, pixels: np.ndarray, labels: np.ndarray | None, batch_size: int = 32
) -> Parity:
    """Run both predictors on uint8 NHWC ``pixels`` and compare their probabilities."""
    chunks = range(0, len(pixels), batch_size)
    expected = np.concatenate([reference.predict_pixels(pixels[i : i + batch_size]) for i in chunks])
    actual = np.concatenate([exported.predict_pixels(pixels[i : i + batch_size]) for i in chunks])
    return Parity(
        images=len(pixels),
        max_abs_diff=float(np.abs(expected - actual).max()),
        top1_agreement=float((expected.argmax(axis=1) == actual.argmax(axis=1)).mean()),
        reference_accuracy=_accuracy(expected, labels),
        exported_accuracy=_accuracy(actual, labels),
    )
