"""Probes: a head trained on a frozen backbone's embeddings, computed once and cached on disk.

The backbone runs once over every image (later runs read the cache); the head then trains in seconds,
under the same Lightning loop, callbacks and run directory as fine-tuning. The module carries the frozen
backbone so the run saves the whole classifier (evaluate, export and serve see an ordinary run), but its
checkpoints hold only the head.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from histoclass.config import Config, InferenceOptions
from histoclass.data.dataset import batch_loader
from histoclass.data.records import ImageRecords
from histoclass.embeddings.compute import embed_records
from histoclass.embeddings.extractors import Extractor, backbone_extractor
from histoclass.errors import HistoclassError
from histoclass.models.factory import Backbone, Classifier
from histoclass.models.heads import KNNHead
from histoclass.training.module import (
    log_training_loss,
    log_validation,
    losses,
    validation_metrics,
)
from histoclass.training.optim import create_optimizer, create_scheduler

__all__ = ["EmbeddingDataModule", "ProbeModule", "probe_parts"]

_BACKBONE_PREFIX = "model.backbone."


class ProbeModule(L.LightningModule):
    """Cross-entropy on the head's answers to cached embeddings; the backbone stays frozen and unused here."""

    def __init__(
        self,
        model: Classifier,
        config: Config,
        num_classes: int,
        extractor: Extractor,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model, self.extractor, self.config = model, extractor, config
        self.model.backbone.requires_grad_(False).eval()
        self.criterion, self.val_criterion = losses(class_weights, config.augment.label_smoothing)
        self.val_metrics, self.val_loss = validation_metrics(num_classes)
        self.strict_loading = False  # checkpoints hold the head only

    @property
    def evaluated(self) -> Classifier:
        return self.model

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        features, labels, _ = batch
        if isinstance(self.model.head, KNNHead):  # stored, not trained: the epoch only validates
            return None
        loss = self.criterion(self.model.head(features), labels)
        log_training_loss(self, loss, len(labels))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        features, labels, _ = batch
        logits = self.model.head(features)
        self.val_loss.update(self.val_criterion(logits, labels), weight=len(labels))
        self.val_metrics.update(logits, labels)

    def on_validation_epoch_end(self) -> None:
        log_validation(self)

    def validation_logits(self, records: ImageRecords) -> tuple[np.ndarray, np.ndarray]:
        """The head's logits (N x views x C) on the validation images' embedded test-time views, and
        their labels, for calibration: the views are embedded once and cached like the training
        images', so a later probe on the same images never passes the backbone over them."""
        views = "all" if InferenceOptions().tta else "identity"
        embedded = _embedded(
            records, self.extractor, self.config, views, "Embedding validation views"
        )
        with torch.no_grad():
            logits = self.model.head.eval()(embedded.tensors[0])
        return logits.reshape(len(records), -1, logits.shape[-1]).numpy(), records.labels

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Leave the frozen backbone out: it is rebuilt from the run's config, and may weigh gigabytes."""
        state = checkpoint["state_dict"]
        for key in [key for key in state if key.startswith(_BACKBONE_PREFIX)]:
            del state[key]

    def configure_optimizers(self):
        if isinstance(self.model.head, KNNHead):
            return None
        optimizer = create_optimizer(self.model, self.config.train)
        scheduler = create_scheduler(
            optimizer, self.config.train, int(self.trainer.estimated_stepping_batches)
        )
        return (
            optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}
        )


class _Rows(TensorDataset):
    """Tensors whose batches are taken by their indices at once, not gathered and stacked row by row."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        return tuple(tensor[indices] for tensor in self.tensors)


class EmbeddingDataModule(L.LightningDataModule):
    """Batches of (embedding, label, index) from memory: a probe's epoch is a pass over float vectors."""

    def __init__(self, train: _Rows, val: _Rows, batch_size: int, seed: int) -> None:
        super().__init__()
        self.train, self.val, self.batch_size, self.seed = train, val, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch) and sharded per process, as image batches are: resumes see the
        same order."""
        trainer = self.trainer
        replicas, rank = (
            (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        )
        sampler = DistributedSampler(
            self.train, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed
        )
        return batch_loader(self.train, self.batch_size, sampler, workers=0)

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.val, max(self.batch_size, 256), workers=0)


def _embedded(
    records: ImageRecords, extractor: Extractor, config: Config, views: str, what: str
) -> _Rows:
    """Embeddings of ``records`` (each view its own sample) with their labels and record indices."""
    embedded = embed_records(records, extractor, views, config.data.batch_size, what)
    if embedded.errors:
        first = next(iter(embedded.errors.values()))
        raise HistoclassError(
            f"{len(embedded.errors)} image(s) could not be embedded ({first}); run check-data"
        )
    features = embedded.features
    n, views_per_image, dims = features.shape
    index = np.repeat(np.arange(n), views_per_image)
    return _Rows(
        torch.from_numpy(features.reshape(n * views_per_image, dims)),
        torch.from_numpy(records.labels[index]),
        torch.from_numpy(index),
    )


def probe_parts(
    config: Config,
    model: Classifier,
    backbone: Backbone,
    num_classes: int,
    train: ImageRecords,
    val: ImageRecords,
    class_weights: torch.Tensor | None,
) -> tuple[ProbeModule, EmbeddingDataModule]:
    """The probe's module and its data: cached embeddings of the training (and validation) images."""
    views = "all" if config.train.probe_views else "identity"
    extractor = backbone_extractor(backbone, config.model.name, config.data.image_size)
    train_set = _embedded(train, extractor, config, views, "Embedding training images")
    val_set = _embedded(val, extractor, config, "identity", "Embedding validation images")
    if isinstance(model.head, KNNHead):
        model.head.fit(train_set.tensors[0], train_set.tensors[1])
    module = ProbeModule(model, config, num_classes, extractor, class_weights)
    return module, EmbeddingDataModule(
        train_set, val_set, config.train.probe_batch, config.train.seed
    )
