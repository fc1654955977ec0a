"""Stain normalisation: every image's colours mapped onto a target image's, by Macenko et al. 2009 (H&E stain
vectors in optical density) or Reinhard et al. 2001 (LAB means and spreads), through torchstain's numpy
normalisers.

Fitted once on the target at training time; the fitted numbers (not the target image) live in ``model.json``
and an export's ``preprocess.json``, so training, evaluation, prediction, serving, slides and exported models
apply one and the same mapping, and a run directory keeps working when the target image is gone.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import BaseModel

__all__ = ["StainMethod", "StainNormalization", "stain_normalized"]

StainMethod = Literal["macenko", "reinhard"]

#: Per-image estimation fails on images with too little stain (background, blank tiles): those pass unchanged.
_UNFIT = (np.linalg.LinAlgError, FloatingPointError, RuntimeWarning, IndexError, ValueError)


@contextlib.contextmanager
def _strict() -> Iterator[None]:
    """Numeric trouble (an empty tissue mask, a zero spread) raised, not warned and carried on as NaN."""
    with warnings.catch_warnings(), np.errstate(divide="raise", invalid="raise"):
        warnings.simplefilter("error", RuntimeWarning)
        yield


class StainNormalization(BaseModel):
    """A fitted normaliser as data. Macenko: ``reference`` holds the target's haematoxylin and eosin vectors
    (3 x 2) and ``scale`` their 99th-percentile concentrations (2). Reinhard: ``reference`` the target's LAB
    means (1 x 3) and ``scale`` its LAB standard deviations (3)."""

    method: StainMethod
    reference: list[list[float]]
    scale: list[float]

    @classmethod
    def fit(cls, method: StainMethod, target: np.ndarray) -> StainNormalization:
        """Fit ``method`` on ``target`` (uint8 H x W x 3); raises ValueError when it has too little stain."""
        normalizer = _normalizer(method)
        try:
            with _strict():
                normalizer.fit(target)
        except _UNFIT as error:
            raise ValueError(f"too little stain to fit {method} ({type(error).__name__})") from None
        if method == "macenko":
            reference, scale = normalizer.HERef, normalizer.maxCRef
        else:
            reference, scale = normalizer.target_means[None], normalizer.target_stds
        if not (np.isfinite(reference).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError(f"too little stain to fit {method} (a flat image)")
        return cls(method=method, reference=reference.tolist(), scale=scale.tolist())

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 N x H x W x 3 images, each mapped onto the target's stain (unchanged where it
        cannot be fitted)."""
        normalizer, out = self._fitted(), np.empty_like(pixels)
        for i, image in enumerate(pixels):
            out[i] = self._one(normalizer, image)
        return out

    def _fitted(self):
        normalizer = _normalizer(self.method)
        if self.method == "macenko":
            normalizer.HERef, normalizer.maxCRef = np.array(self.reference), np.array(self.scale)
        else:
            # float32, as torchstain's fit leaves them: float64 statistics would lift the LAB
            # arithmetic to float64 (numpy 2's promotion) and move some pixels by one level from
            # what the fitted normaliser gives.
            means, stds = np.array(self.reference[0], np.float32), np.array(self.scale, np.float32)
            normalizer.target_means, normalizer.target_stds = means, stds
        return normalizer

    def _one(self, normalizer, image: np.ndarray) -> np.ndarray:
        try:
            with _strict():
                if self.method == "macenko":
                    return normalizer.normalize(image, stains=False)[0]
                return normalizer.normalize(image)
        except _UNFIT:
            return image


def _normalizer(method: StainMethod):
    """torchstain's numpy normaliser for ``method`` (torchstain is light: numpy only)."""
    import torchstain

    normalizers = torchstain.normalizers
    return (
        normalizers.MacenkoNormalizer if method == "macenko" else normalizers.ReinhardNormalizer
    )(backend="numpy")


def stain_normalized(pixels: np.ndarray, stain: StainNormalization | None) -> np.ndarray:
    """uint8 NHWC images as a model saw its training images: through ``stain`` when it has one."""
    return stain.apply(pixels) if stain is not None else pixels
