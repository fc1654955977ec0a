"""The LightningModule: loss, metrics and optimiser for a :class:`Classifier`. Lightning owns the loop."""

from __future__ import annotations

import lightning as L
import torch
from timm.utils import ModelEmaV3
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
from histoclass.training.optim import create_optimizer, create_scheduler
from histoclass.training.resizing import resized

__all__ = [
    "ClassifierModule",
    "log_training_loss",
    "log_validation",
    "losses",
    "validation_metrics",
]


def validation_metrics(num_classes: int) -> tuple[MetricCollection, MeanMetric]:
    """Validation metrics and loss, summed over every image and process (exact whatever the sharding)."""
    metrics = MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "macro_precision": MulticlassPrecision(num_classes, average="macro", zero_division=0),
            "macro_recall": MulticlassRecall(num_classes, average="macro", zero_division=0),
            "macro_f1": MulticlassF1Score(num_classes, average="macro", zero_division=0),
        },
        prefix="val_",
    )
    return metrics, MeanMetric()


def losses(
    class_weights: torch.Tensor | None, label_smoothing: float
) -> tuple[nn.Module, nn.Module]:
    """Training and validation cross-entropy. Validation scores the plain log loss: smoothing is a training
    device, and the checkpoint chosen on validation should be the one whose probabilities fit best."""
    return (
        nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing),
        nn.CrossEntropyLoss(weight=class_weights),
    )


def log_training_loss(module: L.LightningModule, loss: torch.Tensor, images: int) -> None:
    """A step's training loss, per step and (weighted by ``images``) per epoch, in the progress bar."""
    module.log(
        "train_loss",
        loss,
        on_step=True,
        on_epoch=True,
        prog_bar=True,
        batch_size=images,
        sync_dist=True,
    )


def log_validation(module: L.LightningModule) -> None:
    """Log and reset a module's ``val_metrics`` and ``val_loss`` at the end of a validation epoch."""
    metrics = module.val_metrics.compute()
    # Already reduced over every process by torchmetrics: sync_dist averages identical values.
    module.log("val_loss", module.val_loss.compute(), prog_bar=True, sync_dist=True)
    module.log_dict(metrics, sync_dist=True)
    module.log("val_acc", metrics["val_accuracy"], prog_bar=True, logger=False, sync_dist=True)
    module.val_metrics.reset()
    module.val_loss.reset()


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
        sides: list[int] | None = None,
    ) -> None:
        """``sides``: each epoch's training side (progressive resizing); none: the images' own."""
        super().__init__()
        self.sides = sides
        self.model = model.to(memory_format=torch.channels_last)
        self.train_config = train
        self.mixer = mixer
        self.augment = augment if augment is not None and augment.active else None
        # The averaged weights are what validation scores, checkpoints keep and the run finally saves.
        self.ema = (
            ModelEmaV3(self.model, decay=train.ema, use_warmup=True, warmup_power=3 / 4)
            if train.ema
            else None
        )
        if self.ema is not None:
            self.ema.requires_grad_(False)
        # in place: parameter names (and so checkpoints) stay those of the plain model
        if train.compile:
            self.model.compile()
        self.register_buffer("mean", torch.tensor(model.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(model.std).view(1, -1, 1, 1), persistent=False)
        self.criterion, self.val_criterion = losses(class_weights, label_smoothing)
        self.val_metrics, self.val_loss = validation_metrics(model.head[-1].out_features)

    @property
    def evaluated(self) -> Classifier:
        """The model validation scores and the run saves: the EMA weights when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.evaluated(normalize_torch(images, self.mean, self.std))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels, index = batch
        scaled = images.float() * (1 / 255)
        if self.sides:
            scaled = resized(scaled, self.sides[min(self.current_epoch, len(self.sides) - 1)])
        if self.augment is not None:
            scaled = self.augment(scaled, index, self.current_epoch, batch_idx)
        inputs = standardize_torch(scaled, self.mean, self.std)
        targets: torch.Tensor = labels
        if self.mixer is not None:
            inputs, targets = self.mixer(inputs, labels)
        loss = self.criterion(self.model(inputs), targets)
        log_training_loss(self, loss, len(labels))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels, _ = batch
        logits = self(images)
        self.val_loss.update(self.val_criterion(logits, labels), weight=len(labels))
        self.val_metrics.update(logits, labels)

    def on_validation_epoch_end(self) -> None:
        log_validation(self)

    def configure_optimizers(self):
        optimizer = create_optimizer(self.model, self.train_config)
        scheduler = create_scheduler(
            optimizer, self.train_config, int(self.trainer.estimated_stepping_batches)
        )
        return (
            optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}
        )
