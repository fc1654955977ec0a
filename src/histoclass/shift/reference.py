"""The shift score: how far an image's features lie from the training images' features.

The score is the mean cosine distance to the ``k`` nearest training images in the model's own feature
statistics (:mod:`histoclass.shift.features`), each dimension standardised by the training images' mean and
spread. Validation images are as new to the model as any future image of the same
source, so the threshold is a high quantile of their scores: above it, an image is unlike the training data.
Pure numpy: any engine's features can be scored, and the reference is a plain ``.npz`` (no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from histoclass.atomic import atomic_path
from histoclass.errors import HistoclassError

__all__ = ["DEFAULT_K", "DEFAULT_QUANTILE", "ShiftReference", "fit_reference", "unit_rows"]

#: Neighbours averaged: several, so one odd training image near a new one does not hide the shift.
DEFAULT_K = 10
#: Share of same-source (validation) images scored below the threshold.
DEFAULT_QUANTILE = 0.95


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so a dot product is a cosine similarity."""
    features = np.asarray(features, np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class ShiftReference:
    """Standardised unit feature vectors of training images, how to standardise new ones, and the threshold
    fitted on validation images."""

    features: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    k: int
    threshold: float
    quantile: float
    #: Where the reference images came from (``train``, or the images a run was adapted to).
    fitted_on: str = "train"

    def standardize(self, features: np.ndarray) -> np.ndarray:
        return unit_rows((np.asarray(features, np.float32) - self.center) / self.scale)

    def score(self, features: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """Shift scores (N,) of ``features`` (N x D): mean cosine distance to the k nearest
        reference images."""
        features = self.standardize(features)
        k = min(self.k, len(self.features))
        scores = np.empty(len(features), np.float32)
        for start in range(0, len(features), chunk):
            similarity = features[start : start + chunk] @ self.features.T
            nearest = np.partition(similarity, -k, axis=1)[:, -k:]
            scores[start : start + chunk] = 1.0 - nearest.mean(axis=1)
        return scores

    def unlike(self, scores: np.ndarray) -> np.ndarray:
        """Booleans: which scores lie above the threshold."""
        return np.asarray(scores) > self.threshold

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                features=self.features.astype(np.float16),
                center=self.center,
                scale=self.scale,
                k=self.k,
                threshold=self.threshold,
                quantile=self.quantile,
                fitted_on=np.array(self.fitted_on),
            )

    @classmethod
    def load(cls, path: str | Path) -> ShiftReference:
        try:
            with np.load(path, allow_pickle=False) as stored:
                return cls(
                    features=stored["features"].astype(np.float32),
                    center=stored["center"].astype(np.float32),
                    scale=stored["scale"].astype(np.float32),
                    k=int(stored["k"]),
                    threshold=float(stored["threshold"]),
                    quantile=float(stored["quantile"]),
                    fitted_on=str(stored["fitted_on"]),
                )
        except (OSError, KeyError, ValueError) as error:
            raise HistoclassError(
                f"'{path}' is damaged ({error}); train the run again or delete the file"
            ) from None


def fit_reference(
    reference: np.ndarray,
    held_out: np.ndarray,
    k: int = DEFAULT_K,
    quantile: float = DEFAULT_QUANTILE,
    fitted_on: str = "train",
) -> ShiftReference:
    """A reference of ``reference`` features whose threshold is the ``quantile`` of ``held_out``'s scores."""
    if len(reference) == 0 or len(held_out) == 0:
        raise HistoclassError("a shift reference needs reference and held-out images")
    reference = np.asarray(reference, np.float32)
    center, scale = reference.mean(axis=0), reference.std(axis=0) + 1e-6
    draft = ShiftReference(
        unit_rows((reference - center) / scale), center, scale, k, float("inf"), quantile, fitted_on
    )
    threshold = float(np.quantile(draft.score(held_out), quantile))
    return replace(draft, threshold=threshold)
