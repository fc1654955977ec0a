"""Decoding records into whole uint8 batches: the one loader every inference path (and training's
dataset) uses.

Numpy and Pillow only. Pillow releases the GIL while it decodes and resizes, so a thread pool decodes in
parallel, and the next batches decode while the caller's model runs on the current one.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from histoclass.data.images import unreadable_reason

__all__ = ["Loadable", "PixelBatch", "default_threads", "iter_batches", "load_pixels"]


class Loadable(Protocol):
    """What the loader decodes from: image records, or the tiles of a slide."""

    def __len__(self) -> int: ...

    def load(self, i: int, size: int) -> np.ndarray: ...


@dataclass
class PixelBatch:
    """The readable images of a batch (uint8 N x S x S x 3), their record indices, and the unreadable ones."""

    indices: list[int]
    pixels: np.ndarray
    errors: dict[int, str]


def default_threads() -> int:
    """Decoding threads: one per core, at most 16."""
    return max(1, min(16, os.cpu_count() or 1))


def _load_one(records: Loadable, i: int, size: int) -> np.ndarray | str:
    try:
        return records.load(i, size)
    except Exception as error:
        # every decoder failure is a per-file problem, reported in the output
        return unreadable_reason(error)


def _assemble(indices: list[int], loaded: list[np.ndarray | str], size: int) -> PixelBatch:
    good = [k for k, item in enumerate(loaded) if not isinstance(item, str)]
    errors = {indices[k]: item for k, item in enumerate(loaded) if isinstance(item, str)}
    pixels = np.stack([loaded[k] for k in good]) if good else np.zeros((0, size, size, 3), np.uint8)
    return PixelBatch([indices[k] for k in good], pixels, errors)


def load_pixels(
    records: Loadable, indices: list[int], size: int, cache: np.ndarray | None = None
) -> PixelBatch:
    """Images ``indices`` of ``records`` at ``size``, decoded here (or read from ``cache``, the
    decoded pixels)."""
    if cache is not None:
        order = np.argsort(indices)  # memory-mapped reads go fastest in file order
        pixels = np.empty((len(indices), size, size, 3), np.uint8)
        pixels[order] = cache[np.asarray(indices)[order]]
        return PixelBatch(list(indices), pixels, {})
    return _assemble(list(indices), [_load_one(records, i, size) for i in indices], size)


def iter_batches(
    records: Loadable,
    size: int,
    batch_size: int,
    threads: int | None = None,
    cache: np.ndarray | None = None,
    prefetch: int = 2,
) -> Iterator[PixelBatch]:
    """Every record in order, ``batch_size`` at a time, decoded on a thread pool ``prefetch``
    batches ahead."""
    spans = [
        list(range(s, min(s + batch_size, len(records))))
        for s in range(0, len(records), batch_size)
    ]
    if cache is not None:
        for span in spans:
            yield load_pixels(records, span, size, cache)
        return
    with ThreadPoolExecutor(max_workers=threads or default_threads()) as pool:
        pending: deque[tuple[list[int], list[Future]]] = deque()
        for span in spans:
            pending.append((span, [pool.submit(_load_one, records, i, size) for i in span]))
            if len(pending) > prefetch:
                indices, futures = pending.popleft()
                yield _assemble(indices, [f.result() for f in futures], size)
        while pending:
            indices, futures = pending.popleft()
            yield _assemble(indices, [f.result() for f in futures], size)
