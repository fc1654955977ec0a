"""Torch datasets and the LightningDataModule: records -> uint8 batches (normalised later, on the device)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from histoclass.data.records import ImageRecords

__all__ = ["HistoDataModule", "ImageDataset", "build_ram_cache", "default_workers"]


def default_workers() -> int:
    """Loader processes: every core beside the main process (at least one)."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


def build_ram_cache(records: ImageRecords, size: int, workers: int | None = None) -> np.ndarray:
    """Decode and resize every image once into one uint8 array (N, size, size, 3)."""
    cache = np.empty((len(records), size, size, 3), dtype=np.uint8)

    def fill(i: int) -> None:
        cache[i] = records.load(i, size)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        list(pool.map(fill, range(len(records)), chunksize=64))
    return cache


class ImageDataset(Dataset):
    """``records`` as (uint8 CxHxW tensor, label) pairs at ``image_size``, optionally transformed."""

    def __init__(self, records: ImageRecords, image_size: int, transform=None, cache: np.ndarray | None = None):
        self.records, self.image_size, self.transform, self.cache = records, image_size, transform, cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = self.cache[index] if self.cache is not None else self.records.load(index, self.image_size)
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
        if self.transform is not None:
            image = self.transform(image)
        return image.contiguous(), int(self.records.labels[index])


class HistoDataModule(L.LightningDataModule):
    """Train and validation loaders; shuffling, sharding across processes and workers are Lightning's."""

    def __init__(
        self,
        train: ImageDataset,
        val: ImageDataset,
        batch_size: int,
        workers: int | None = None,
    ) -> None:
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size = batch_size
        self.workers = default_workers() if workers is None else workers

    def _loader(self, dataset: ImageDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.workers > 0,
            prefetch_factor=4 if self.workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
