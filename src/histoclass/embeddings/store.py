"""The on-disk embedding cache: ``$HISTOCLASS_CACHE/embeddings/<extractor key>-<views>/``.

Each image is keyed by what its pixels depend on (file path, size and modification time, or an array's
bytes), so any later job over any subset of the same images reuses them. Vectors are kept as float16 in
chunk files written atomically; a crash never leaves half a chunk behind.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import numpy as np

from histoclass.atomic import atomic_path
from histoclass.data.inputs import file_identities
from histoclass.data.records import ImageRecords

__all__ = ["EmbeddingStore", "image_keys"]

#: Chunks are merged into one once there are more than this many.
_MAX_CHUNKS = 8


def image_keys(records: ImageRecords) -> list[str]:
    """One key per record: a digest of its file's identity, or of its pixels for in-memory data, and of
    its framing."""
    if records.paths is not None:
        texts = [identity.encode() for identity in file_identities(records.paths)]
    else:
        texts = [np.ascontiguousarray(records.array[i]).tobytes() for i in range(len(records))]
    framing = records.framing_key.encode()
    return [hashlib.sha1(text + framing).hexdigest() for text in texts]


class EmbeddingStore:
    """Cached vectors (views x D each) for one extractor and one choice of views."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._index: dict[str, np.ndarray] | None = None

    def _chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.npz")) if self.folder.is_dir() else []

    def _load(self) -> dict[str, np.ndarray]:
        if self._index is None:
            self._index = {}
            for chunk in self._chunks():
                self._index.update(self._read(chunk))
        return self._index

    @staticmethod
    def _read(chunk: Path) -> dict[str, np.ndarray]:
        try:
            with np.load(chunk, allow_pickle=False) as data:
                return dict(zip(data["keys"].tolist(), data["values"], strict=True))
        except FileNotFoundError:
            return {}  # merged into a new chunk by another job meanwhile: read as missing

    def get(self, keys: list[str]) -> dict[int, np.ndarray]:
        """Cached vectors by position in ``keys`` (missing keys are absent)."""
        index = self._load()
        return {i: index[key].astype(np.float32) for i, key in enumerate(keys) if key in index}

    def put(self, keys: list[str], values: np.ndarray) -> None:
        """Add ``values`` (N x views x D) for ``keys`` in a new chunk; merge chunks when there are many."""
        if not keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write(self.folder / f"chunk-{uuid.uuid4().hex}.npz", keys, values.astype(np.float16))
        self._load().update(zip(keys, values.astype(np.float16), strict=True))
        chunks = self._chunks()
        if len(chunks) > _MAX_CHUNKS:
            # what the chunks hold now, other jobs' included, so a merge never drops their vectors
            merged = {key: value for chunk in chunks for key, value in self._read(chunk).items()}
            self._write(
                self.folder / f"chunk-{uuid.uuid4().hex}.npz",
                list(merged),
                np.stack(list(merged.values())),
            )
            for chunk in chunks:
                chunk.unlink(missing_ok=True)
            self._load().update(merged)

    @staticmethod
    def _write(path: Path, keys: list[str], values: np.ndarray) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, keys=np.asarray(keys), values=values)
