"""The LightningDataModule: train and validation loaders of whole uint8 batches, sharded per process."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler

from histoclass.data.dataset import ImageDataset, batch_loader, default_workers

__all__ = ["HistoDataModule"]


class HistoDataModule(L.LightningDataModule):
    """Train and validation loaders with explicit samplers, so every process sees its own shard.

    Training shuffles with a (seed, epoch)-seeded :class:`DistributedSampler` (one replica on one process);
    validation uses an unrepeated sampler, so each image is scored exactly once across processes.
    """

    def __init__(
        self,
        train: ImageDataset,
        val: ImageDataset,
        batch_size: int,
        workers: int | None = None,
        seed: int = 0,
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
        sampler = DistributedSampler(
            self.train_set, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed
        )
        # A last batch of one image breaks BatchNorm in training mode: drop only that one.
        lonely = len(sampler) % self.batch_size == 1
        return batch_loader(
            self.train_set, self.batch_size, sampler, self.workers, lonely, persistent=True
        )

    def val_dataloader(self) -> DataLoader:
        replicas, rank = self._shard()
        sampler = (
            None
            if replicas == 1
            else UnrepeatedDistributedSampler(self.val_set, replicas, rank, shuffle=False)
        )
        return batch_loader(self.val_set, self.batch_size, sampler, self.workers, persistent=True)
