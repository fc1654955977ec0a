"""Torch datasets and the LightningDataModule: records -> uint8 batches, augmented and normalised on the device.

Loader processes only decode and resize (or read a decoded cache), a whole batch per call: no per-image
tensors, no per-image augmentation on the CPU. Paths live in one numpy array, so the processes' memory does not
grow with the number of images (Python lists of paths are copied page by page into every forked worker).
"""

from __future__ import annotations

import os

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

from histoclass.data.images import load_resized, unreadable_reason
from histoclass.data.records import ImageRecords
from histoclass.errors import HistoclassError

__all__ = ["Batch", "HistoDataModule", "ImageDataset", "batch_loader", "default_workers"]

#: (uint8 images N x 3 x S x S, labels, dataset indices, {dataset index: reason} for skipped images)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[int, str]]


def default_workers() -> int:
    """Loader processes: every core beside the main process (at least one)."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


class ImageDataset(Dataset):
    """``records`` at ``image_size`` as whole uint8 batches (:data:`Batch`), from files or a decoded cache.

    ``skip_unreadable`` reports a file that fails to decode instead of raising (prediction); training data has
    been checked already, so there a failure is an error naming the file.
    """

    def __init__(
        self,
        records: ImageRecords,
        image_size: int,
        cache: np.ndarray | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        self.records, self.image_size, self.cache = records, image_size, cache
        self.skip_unreadable = skip_unreadable
        self.labels = np.asarray(records.labels, dtype=np.int64)
        self.paths = np.array([str(p) for p in records.paths]) if records.paths is not None else None

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, i: int) -> np.ndarray:
        if self.paths is not None:
            return load_resized(self.paths[i], self.image_size)
        return self.records.load(i, self.image_size)

    def __getitems__(self, indices: list[int]) -> Batch:
        index = np.asarray(indices, dtype=np.int64)
        if self.cache is not None:
            pixels = np.ascontiguousarray(self.cache[np.sort(index)] if len(index) else self.cache[:0])
            order = np.argsort(np.argsort(index))  # memory-mapped reads go fastest in file order
            return self._batch(pixels[order], index, {})
        size = self.image_size
        pixels = np.empty((len(index), size, size, 3), dtype=np.uint8)
        errors: dict[int, str] = {}
        for row, i in enumerate(index.tolist()):
            try:
                pixels[row] = self._load(i)
            except Exception as error:  # any decoder failure is about this one file
                if not self.skip_unreadable:
                    raise HistoclassError(f"'{self.records.ids[i]}' became unreadable during training") from error
                errors[i] = unreadable_reason(error)
        keep = np.array([i not in errors for i in index.tolist()], dtype=bool)
        return self._batch(pixels[keep], index[keep], errors)

    def _batch(self, pixels: np.ndarray, index: np.ndarray, errors: dict[int, str]) -> Batch:
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        return images, torch.from_numpy(self.labels[index]), torch.from_numpy(index), errors

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])


def _whole_batch(batch: Batch) -> Batch:
    """The collate function: the dataset already returns whole batches."""
    return batch


def batch_loader(
    dataset: ImageDataset,
    batch_size: int,
    sampler: Sampler | None = None,
    workers: int | None = None,
    drop_last: bool = False,
    persistent: bool = False,
) -> DataLoader:
    """A loader of whole batches: worker processes, pinned memory when a GPU is there, deep prefetching."""
    workers = default_workers() if workers is None else workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler if sampler is not None else SequentialSampler(dataset),
        num_workers=workers,
        collate_fn=_whole_batch,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=persistent and workers > 0,
    )


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

    def train_dataloader(self) -> DataLoader:
        replicas, rank = self._shard()
        sampler = DistributedSampler(self.train_set, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed)
        # A last batch of one image breaks BatchNorm in training mode: drop only that one.
        lonely = len(sampler) % self.batch_size == 1
        return batch_loader(self.train_set, self.batch_size, sampler, self.workers, lonely, persistent=True)

    def val_dataloader(self) -> DataLoader:
        replicas, rank = self._shard()
        sampler = None if replicas == 1 else UnrepeatedDistributedSampler(self.val_set, replicas, rank, shuffle=False)
        return batch_loader(self.val_set, self.batch_size, sampler, self.workers, persistent=True)
