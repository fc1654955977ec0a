"""The training dataset: records -> whole uint8 batches for a torch ``DataLoader`` of worker processes.

Loader processes only decode and resize (or read a decoded cache), a whole batch per call: no
per-image tensors, no per-image augmentation on the CPU (that happens on the device, batched). Paths
live in the records' numpy array, so the processes' memory does not grow with the number of images.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from histoclass.data.batches import load_pixels
from histoclass.data.records import ImageRecords
from histoclass.data.stain_normalize import StainNormalization, stain_normalized
from histoclass.errors import HistoclassError

__all__ = ["Batch", "ImageDataset", "batch_loader", "default_workers"]

#: (uint8 images N x 3 x S x S, labels, dataset indices)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def default_workers() -> int:
    """Loader processes: every core beside the main process (at least one)."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


class ImageDataset(Dataset):
    """``records`` at ``image_size`` as whole uint8 batches (:data:`Batch`), from files or a decoded cache,
    through ``stain`` normalisation when given.

    Training data has been checked already, so a file that fails to decode now is an error naming it.
    """

    def __init__(
        self,
        records: ImageRecords,
        image_size: int,
        cache: np.ndarray | None = None,
        stain: StainNormalization | None = None,
    ) -> None:
        self.records, self.image_size, self.cache, self.stain = records, image_size, cache, stain
        self.labels = np.asarray(records.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def __getitems__(self, indices: list[int]) -> Batch:
        batch = load_pixels(self.records, list(indices), self.image_size, self.cache)
        if batch.errors:
            first = next(iter(batch.errors))
            raise HistoclassError(f"'{self.records.ids[first]}' became unreadable during training")
        index = np.asarray(batch.indices, dtype=np.int64)
        images = torch.from_numpy(stain_normalized(batch.pixels, self.stain)).permute(0, 3, 1, 2)
        return images, torch.from_numpy(self.labels[index]), torch.from_numpy(index)

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])


def _whole_batch(batch: Batch) -> Batch:
    """The collate function: the dataset already returns whole batches."""
    return batch


def batch_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: Sampler | None = None,
    workers: int | None = None,
    drop_last: bool = False,
    persistent: bool = False,
) -> DataLoader:
    """A loader of the whole batches ``dataset.__getitems__`` returns: worker processes, pinned memory when a
    GPU is there, deep prefetching."""
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
