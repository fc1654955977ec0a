"""The LightningModule: loss, metrics and optimiser for a :class:`Classifier`. Lightning owns the loop."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from histoclass.config import TrainConfig
from histoclass.data.device_transforms import BatchAugment
from histoclass.data.transforms import BatchMixer
from histoclass.inference.preprocess import normalize_torch, standardize_torch
from histoclass.models.factory import Classifier

__all__ = ["ClassifierModule"]


def _val_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "macro_precision": MulticlassPrecision(num_classes, average="macro", zero_division=0),
            "macro_recall": MulticlassRecall(num_classes, average="macro", zero_division=0),
            "macro_f1": MulticlassF1Score(num_classes, average="macro", zero_division=0),
        },
        prefix="val_",
    )


class ClassifierModule(L.LightningModule):
    """Trains ``model`` with cross-entropy (class weights, label smoothing, MixUp/CutMix targets).

    Batches arrive as uint8 on the device; augmentation and normalisation happen here, batched.
    """

    def __init__(
        self,
        model: Classifier,
        train: TrainConfig,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        mixer: BatchMixer | None = None,
        augment: BatchAugment | None = None,
    ) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)
        self.train_config = train
        self.mixer = mixer
        self.augment = augment if augment is not None and augment.active else None
        if train.compile:  # in place: parameter names (and so checkpoints) stay those of the plain model
            self.model.compile()
        self.register_buffer("mean", torch.tensor(model.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(model.std).view(1, -1, 1, 1), persistent=False)
        self.criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
        self.val_metrics = _val_metrics(model.head[-1].out_features)
        # Summed over every image and process, so the loss is exact whatever the sharding.
        self.val_loss = MeanMetric()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(normalize_torch(images, self.mean, self.std))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels, index = batch
        scaled = images.float() * (1 / 255)
        if self.augment is not None:
            scaled = self.augment(scaled, index, self.current_epoch, batch_idx)
        inputs = standardize_torch(scaled, self.mean, self.std)
        targets: torch.Tensor = labels
        if self.mixer is not None:
            inputs, targets = self.mixer(inputs, labels)
        loss = self.criterion(self.model(inputs), targets)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels, _ = batch
        logits = self(images)
        self.val_loss.update(self.criterion(logits, labels), weight=len(labels))
        self.val_metrics.update(logits, labels)

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics.compute()
        # Already reduced over every process by torchmetrics: sync_dist averages identical values.
        self.log("val_loss", self.val_loss.compute(), prog_bar=True, sync_dist=True)
        self.log_dict(metrics, sync_dist=True)
        self.log("val_acc", metrics["val_accuracy"], prog_bar=True, logger=False, sync_dist=True)
        self.val_metrics.reset()
        self.val_loss.reset()

    def configure_optimizers(self):
        """Two parameter groups: the head at ``lr``, the backbone at ``lr * finetune_lr_scale``.

        The groups exist from the start (frozen parameters get no gradient and so no update), which keeps the
        optimiser and scheduler state identical across phases and therefore resumable.
        """
        cfg = self.train_config
        groups = [
            {"params": list(self.model.head.parameters()), "lr": cfg.lr, "name": "head"},
            {
                "params": list(self.model.backbone.parameters()),
                "lr": cfg.lr * cfg.finetune_lr_scale,
                "name": "backbone",
            },
        ]
        optimizers = {
            "adamw": lambda: torch.optim.AdamW(groups, weight_decay=cfg.weight_decay),
            "adam": lambda: torch.optim.Adam(groups, weight_decay=cfg.weight_decay),
            "sgd": lambda: torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay),
        }
        optimizer = optimizers[cfg.optimizer]()
        if cfg.scheduler == "none":
            return optimizer
        if cfg.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch"},
        }
