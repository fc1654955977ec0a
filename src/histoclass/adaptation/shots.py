"""Fine-tuning on a few labelled images of the new source: K drawn per class, the rest kept to score
the result.

Lightning runs the loop (the same :class:`ClassifierModule` as training, its augmentation the run's own). The
BatchNorm layers keep the statistics of the whole new source (:mod:`.batchnorm`): a few dozen images, in
batches, would give noisier ones.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import RandomSampler

from histoclass.config import AugmentConfig, TrainConfig
from histoclass.data.dataset import ImageDataset, batch_loader
from histoclass.data.device_transforms import BatchAugment
from histoclass.data.records import ImageRecords
from histoclass.data.stain_normalize import StainNormalization
from histoclass.errors import HistoclassError
from histoclass.heap import keep_freed_memory
from histoclass.training.module import ClassifierModule

__all__ = ["draw_shots", "fine_tune"]


def draw_shots(
    records: ImageRecords, shots: int, labels: list[str], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``shots`` images per class drawn with ``seed``, and of the rest; a class with too
    few is an error."""
    rng = np.random.default_rng(seed)
    chosen = []
    for k, name in enumerate(labels):
        members = np.flatnonzero(records.labels == k)
        if len(members) < shots:
            raise HistoclassError(
                f"--shots {shots}: class {name} has {len(members)} labelled images; pass --shots "
                f"{len(members)} "
                "or fewer"
            )
        chosen.append(rng.choice(members, shots, replace=False))
    picked = np.sort(np.concatenate(chosen))
    return picked, np.setdiff1d(np.arange(len(records)), picked)


class _FrozenStatistics(L.Callback):
    """BatchNorm in inference mode during fine-tuning: the new source's statistics stay as estimated."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()


def fine_tune(
    model: nn.Module,
    records: ImageRecords,
    size: int,
    augment: AugmentConfig,
    epochs: int,
    lr: float,
    seed: int,
    stain: StainNormalization | None = None,
    head_only: bool = False,
) -> nn.Module:
    """Fine-tune ``model`` (every layer, or its head only) on ``records`` (cosine schedule, no EMA,
    no validation)."""
    model.backbone.requires_grad_(not head_only)  # frozen parameters get no gradient, so no update
    train = TrainConfig(
        epochs=epochs,
        lr=lr,
        finetune_lr_scale=1.0,
        layer_decay=None,
        ema=0,
        warmup_epochs=0,
        seed=seed,
    )
    L.seed_everything(seed, verbose=False)
    keep_freed_memory()
    module = ClassifierModule(
        model, train, label_smoothing=augment.label_smoothing, augment=BatchAugment(augment, seed)
    )
    dataset = ImageDataset(records, size, stain=stain)
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    loader = batch_loader(dataset, min(32, len(records)), sampler, 0, len(records) % 32 == 1)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_FrozenStatistics()],
    )
    trainer.fit(module, train_dataloaders=loader)
    return module.model.eval()
