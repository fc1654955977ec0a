"""Torch datasets and the LightningDataModule: records -> uint8 batches (normalised later, on the device)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

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
    """``records`` as (uint8 CxHxW tensor, label) pairs at ``image_size``, optionally transformed.

    Augmentation randomness is seeded from (seed, epoch, index): the same image gets the same augmentation in
    the same epoch however many workers or processes load it, so a resumed run repeats an uninterrupted one.
    """

    def __init__(
        self,
        records: ImageRecords,
        image_size: int,
        transform=None,
        cache: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        self.records, self.image_size, self.transform, self.cache = records, image_size, transform, cache
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = self.cache[index] if self.cache is not None else self.records.load(index, self.image_size)
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
        if self.transform is not None:
            torch.random.default_generator.manual_seed((self.seed * 1_000_003 + self.epoch * 100_019 + index) % 2**63)
            image = self.transform(image)
        return image.contiguous(), int(self.records.labels[index])


class HistoDataModule(L.LightningDataModule):
    """Train and validation loaders with explicit samplers, so every process sees its own shard.

    Training shuffles with a (seed, epoch)-seeded :class:`DistributedSampler` (one replica on one process);
    validation uses an unrepeated sampler, so each image is scored exactly once across processes.
    """

    def __init__(
        self, train: ImageDataset, val: ImageDataset, batch_size: int, workers: int | None = None, seed: int = 0
    ):
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size = batch_size
        self.workers = default_workers() if workers is None else workers
        self.seed = seed

    def _shard(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: ImageDataset, sampler, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
            drop_last=drop_last,
            prefetch_factor=4 if self.workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        replicas, rank = self._shard()
        sampler = DistributedSampler(self.train_set, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed)
        # A last batch of one image breaks BatchNorm in training mode: drop only that one.
        lonely = len(sampler) % self.batch_size == 1
        return self._loader(self.train_set, sampler, drop_last=lonely)

    def val_dataloader(self) -> DataLoader:
        replicas, rank = self._shard()
        if replicas == 1:
            return self._loader(self.val_set, SequentialSampler(self.val_set))
        return self._loader(self.val_set, UnrepeatedDistributedSampler(self.val_set, replicas, rank, shuffle=False))
