"""Embedding records: cached vectors are read, the rest computed in batches and added to the cache."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from histoclass.console import console
from histoclass.data.records import ImageRecords
from histoclass.data.sources import cache_root
from histoclass.embeddings.extractors import Extractor
from histoclass.embeddings.store import EmbeddingStore, image_keys
from histoclass.inference.embedder import Embedder, Views, view_count, view_passes

__all__ = ["Embedded", "embed_records"]


@dataclass
class Embedded:
    """N x views x D features (NaN rows for unreadable images) and the reasons those were unreadable."""

    features: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def readable(self) -> np.ndarray:
        """Indices of the images that have features."""
        return np.asarray(
            [i for i in range(len(self.features)) if i not in self.errors], dtype=np.int64
        )


def embed_records(
    records: ImageRecords,
    extractor: Extractor,
    views: Views = "identity",
    batch_size: int = 64,
    what: str = "Embedding",
) -> Embedded:
    """Features of every record, from the cache where it has them."""
    store = EmbeddingStore(cache_root() / "embeddings" / f"{extractor.key}-{views}")
    keys = image_keys(records) if extractor.cacheable else [""] * len(records)
    found = store.get(keys) if extractor.cacheable else {}
    todo = [i for i in range(len(records)) if i not in found]
    computed, errors = (
        _compute(records.subset(todo), extractor, views, batch_size, what) if todo else ({}, {})
    )
    errors = {todo[i]: reason for i, reason in errors.items()}
    # Cached vectors are float16: new ones are rounded the same way, so a first run and a later one that reads
    # the cache see identical features (and find identical clusters).
    new = {
        todo[i]: vectors.astype(np.float16).astype(np.float32) for i, vectors in computed.items()
    }
    if extractor.cacheable and new:
        store.put([keys[i] for i in new], np.stack(list(new.values())))
    vectors = found | new
    dims = next(iter(vectors.values())).shape[-1] if vectors else 0
    features = np.full((len(records), view_count(views), dims), np.nan, np.float32)
    for i, value in vectors.items():
        features[i] = value
    return Embedded(features, errors)


def _compute(
    records: ImageRecords, extractor: Extractor, views: Views, batch_size: int, what: str
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    engine = extractor.engine(passes=len(records) * view_passes(views))
    embedder = Embedder(engine)
    computed, errors = {}, {}
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(
            f"{what} {len(records)} images ({engine.name})", total=len(records)
        )
        for batch in embedder.embed_records(records, batch_size, views):
            computed.update(zip(batch.indices, batch.features, strict=True))
            errors.update(batch.errors)
            progress.advance(task, len(batch.indices) + len(batch.errors))
    return computed, errors
