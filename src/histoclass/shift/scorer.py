"""Scoring images against a run's shift reference, and building that reference when a run is finished."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from histoclass.console import console
from histoclass.data.records import ImageRecords
from histoclass.inference.embedder import Embedder
from histoclass.runs import RunDir
from histoclass.shift.reference import ShiftReference, fit_reference

__all__ = ["REFERENCE_IMAGES", "ShiftScorer", "build_reference", "open_scorer"]

#: Reference and held-out images embedded at most: enough for stable neighbours, seconds on a CPU.
REFERENCE_IMAGES = 2000


class ShiftScorer:
    """uint8 NHWC images at the model's size -> shift scores, with the run's reference. Its features
    come from ``features`` (a converted engine's embedder) or else the run's backbone through PyTorch,
    opened at the first score, so opening a run on a converted engine stays torch-free until then."""

    def __init__(
        self,
        run_root: Path,
        reference: ShiftReference,
        features: Callable[[], Embedder] | None = None,
    ) -> None:
        self.run_root, self.reference, self.features = run_root, reference, features

    @functools.cached_property
    def embedder(self) -> Embedder:
        if self.features:
            return self.features()
        from histoclass.shift.features import feature_embedder  # torch and the model: seconds

        return feature_embedder(self.run_root)

    def score(self, pixels: np.ndarray) -> np.ndarray:
        return self.reference.score(self.embedder.embed_pixels(pixels)[:, 0])


def open_scorer(
    run_root: str | Path, features: Callable[[], Embedder] | None = None
) -> ShiftScorer | None:
    """The scorer of a run directory, or None when it has no reference (trained before shift scores);
    ``features``: see :class:`ShiftScorer`."""
    run = RunDir(Path(run_root))
    if not run.shift_reference.is_file():
        return None
    return ShiftScorer(run.root, ShiftReference.load(run.shift_reference), features)


def build_reference(
    run: RunDir,
    reference: ImageRecords,
    held_out: ImageRecords,
    seed: int = 0,
    fitted_on: str = "train",
) -> ShiftReference | None:
    """Embed ``reference`` and ``held_out`` images with the run's model, fit the threshold and save
    it in the run."""
    from histoclass.shift.features import embed_sample, feature_embedder

    if len(reference) == 0 or len(held_out) == 0:
        return None
    # Whole images, whatever the model's framing: around a cell, an ultrasound image or a tissue tile looks
    # more like a cell than it does whole (AUROC 0.90 against 1.00; docs/benchmarks.md, cell framing).
    reference, held_out = reference.framed("field"), held_out.framed("field")
    embedder = feature_embedder(run.root)
    with console.status("Embedding reference images for the shift score"):
        features = embed_sample(embedder, reference, REFERENCE_IMAGES, seed)
        held = embed_sample(embedder, held_out, REFERENCE_IMAGES, seed)
    if len(features) == 0 or len(held) == 0:
        return None
    fitted = fit_reference(features, held, fitted_on=fitted_on)
    fitted.save(run.shift_reference)
    console.print(
        f"Shift score: {len(features)} reference images; threshold {fitted.threshold:.3f} "
        f"({fitted.quantile:.0%} of {len(held)} held-out images below it)"
    )
    return fitted
