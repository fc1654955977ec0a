"""Decoded-image caches: every image decoded and resized once into one uint8 array (N, size, size, 3).

``ram`` holds it in memory for one job; ``disk`` keeps it as a memory-mapped ``.npy`` under
``$HISTOCLASS_CACHE/decoded``, keyed by the files (path, size, modification time) and the image size, so later
runs, evaluations and benchmarks skip decoding entirely and share it through the page cache. Numpy only.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np

from histoclass.atomic import atomic_path
from histoclass.data.images import RESIZE_METHOD
from histoclass.data.inputs import file_identities
from histoclass.data.records import ImageRecords

__all__ = ["CacheKind", "build_cache", "cache_key", "decoded_cache", "fitting_cache"]

CacheKind = Literal["none", "ram", "disk"]

#: ``--cache auto`` keeps the decoded images in memory when they take at most this share of the memory
#: free at start: decoding once pays for itself from the second epoch (docs/benchmarks.md, issue 34).
RAM_SHARE = 0.25


def fitting_cache(images: int, size: int, copies: int = 1) -> tuple[CacheKind, str]:
    """``--cache auto``: ``ram`` when ``copies`` (one per training process on this machine) of
    ``images`` decoded at ``size`` fit in :data:`RAM_SHARE` of the free memory, else ``none``; and
    why, in words."""
    import psutil

    needed, free = copies * images * size * size * 3, psutil.virtual_memory().available
    amount = f"{needed / 2**30:.2f} GiB for {images} images at {size} px"
    if needed <= RAM_SHARE * free:
        return "ram", f"decoded once into memory ({amount}; --cache auto)"
    return "none", (
        f"decoded from the files every epoch ({amount} would take more than a quarter of the "
        f"{free / 2**30:.1f} GiB free; --cache auto); --cache disk keeps them on disk"
    )


def _fill(out: np.ndarray, records: ImageRecords, size: int, workers: int | None) -> None:
    """Decode every record into ``out`` on threads (Pillow releases the GIL while it decodes and resizes)."""

    def fill(i: int) -> None:
        out[i] = records.load(i, size)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        list(pool.map(fill, range(len(records)), chunksize=64))


def build_cache(records: ImageRecords, size: int, workers: int | None = None) -> np.ndarray:
    """Decode and resize every image once into one in-memory uint8 array (N, size, size, 3)."""
    cache = np.empty((len(records), size, size, 3), dtype=np.uint8)
    _fill(cache, records, size, workers)
    return cache


def cache_key(records: ImageRecords, size: int) -> str:
    """A digest of what the cached pixels depend on: the framing, each file's path, size and mtime (or the
    array's bytes)."""
    digest = hashlib.sha256(f"{RESIZE_METHOD}|{size}|{len(records)}{records.framing_key}".encode())
    if records.paths is not None:
        for identity in file_identities(records.paths):
            digest.update(f"{identity}\n".encode())
    else:
        assert records.array is not None
        digest.update(np.ascontiguousarray(records.array).data)
    return digest.hexdigest()[:24]


def _disk_cache(records: ImageRecords, size: int, folder: Path, workers: int | None) -> np.ndarray:
    path = folder / f"{cache_key(records, size)}-{size}px.npy"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # a crash mid-build leaves no half-filled cache behind
            array = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.uint8, shape=(len(records), size, size, 3)
            )
            _fill(array, records, size, workers)
            array.flush()
            del array
    return np.load(path, mmap_mode="r")


def decoded_cache(
    records: ImageRecords,
    size: int,
    kind: CacheKind,
    folder: Path | None = None,
    workers: int | None = None,
) -> np.ndarray | None:
    """The decoded pixels of ``records`` for ``kind`` (None for ``none``); ``folder`` defaults to
    the cache root."""
    if kind == "none":
        return None
    if kind == "ram":
        return build_cache(records, size, workers)
    from histoclass.data.sources import cache_root

    return _disk_cache(records, size, folder or cache_root() / "decoded", workers)
