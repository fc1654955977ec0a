"""Feature vectors instead of probabilities: any feature module behind an engine, through the same
batched path.

Used for near-duplicate audits, cached embeddings for probes, and ``histoclass embed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from histoclass.data.batches import iter_batches
from histoclass.data.records import ImageRecords
from histoclass.inference.engines import Engine
from histoclass.inference.preprocess import DIHEDRAL_VIEWS

__all__ = ["Embedder", "EmbeddingBatch", "Views", "view_count", "view_passes"]

#: ``identity``: the image as it is; ``half-turn``: the mean over it and its 180-degree rotation
#: (the near-duplicate search's: a quarter of the cost of ``mean``, as good at finding copies,
#: docs/benchmarks.md); ``mean``: the mean over the 8 flips and rotations (invariant to them);
#: ``all``: each of the 8 kept, as extra training samples for a probe.
Views = Literal["identity", "half-turn", "mean", "all"]


def view_count(views: Views) -> int:
    """How many vectors an image gets."""
    return DIHEDRAL_VIEWS if views == "all" else 1


def view_passes(views: Views) -> int:
    """How many times the model sees each image."""
    return {"identity": 1, "half-turn": 2}.get(views, DIHEDRAL_VIEWS)


@dataclass
class EmbeddingBatch:
    """Features (N x views x D, float32) of the readable images of a batch, and the unreadable ones."""

    indices: list[int]
    features: np.ndarray
    errors: dict[int, str]


class Embedder:
    """Images -> feature vectors with the engine's model (whose ``logits`` are features here)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def embed_pixels(self, pixels: np.ndarray, views: Views = "identity") -> np.ndarray:
        """N x views x D features of uint8 NHWC images at the model's size."""
        if views == "half-turn":
            turned = np.ascontiguousarray(pixels[:, ::-1, ::-1])
            return (self.engine.view_outputs(pixels) + self.engine.view_outputs(turned)) / 2
        features = self.engine.view_outputs(pixels, all_views=views != "identity")
        return features.mean(axis=1, keepdims=True) if views == "mean" else features

    def embed_records(
        self,
        records: ImageRecords,
        batch_size: int = 64,
        views: Views = "identity",
        threads: int | None = None,
    ) -> Iterator[EmbeddingBatch]:
        """Every record in order; unreadable images are reported, not raised."""
        size = self.engine.info.image_size
        for batch in iter_batches(records, size, batch_size, threads):
            if batch.indices:
                features = self.embed_pixels(batch.pixels, views)
            else:
                features = np.zeros((0, view_count(views), 0), np.float32)
            yield EmbeddingBatch(batch.indices, features.astype(np.float32), batch.errors)
