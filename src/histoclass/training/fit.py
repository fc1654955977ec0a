"""Fitting one run directory: backbone + new head trained by Lightning on given training and validation images,
then finished (best weights saved, calibrated, metrics written). The train job calls it once, or once per fold."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

from histoclass.atomic import write_text
from histoclass.config import Config
from histoclass.console import console
from histoclass.data.cache import decoded_cache
from histoclass.data.checks import DataReport
from histoclass.data.dataset import ImageDataset
from histoclass.data.device_transforms import BatchAugment
from histoclass.data.images import RESIZE_METHOD, load_resized
from histoclass.data.records import ImageRecords
from histoclass.data.stain_normalize import StainNormalization
from histoclass.data.transforms import create_batch_mixer
from histoclass.errors import HistoclassError, Interrupted
from histoclass.models.factory import Backbone, Classifier
from histoclass.models.heads import create_head
from histoclass.models.serialization import count_parameters
from histoclass.runs import RUN_DIR_ENV, ModelInfo, RunDir, write_labels
from histoclass.runs.config_file import write_run_config
from histoclass.runs.split import SplitRow, write_split
from histoclass.training.datamodule import HistoDataModule
from histoclass.training.finish import finish_run
from histoclass.training.module import ClassifierModule
from histoclass.training.probe import probe_parts
from histoclass.training.trainer import RunCallbacks, build_trainer

__all__ = ["fit_run", "fit_stain", "write_run_header"]


def _balanced_weights(train: ImageRecords, num_classes: int) -> torch.Tensor:
    counts = train.class_counts(num_classes).astype(np.float64)
    return torch.tensor(counts.sum() / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def write_run_header(
    run: RunDir, config: Config, classes: list[str], report: DataReport, train: ImageRecords, val: ImageRecords
) -> None:
    """Config, labels, the exact split and the skipped files: what reproduces the run."""
    write_run_config(run, config)
    write_labels(run.labels, classes)
    rows = [
        SplitRow(image_id, classes[k], name, part.groups[i] if part.groups else "")
        for name, part in (("train", train), ("val", val))
        for i, (image_id, k) in enumerate(zip(part.ids, part.labels, strict=True))
    ]
    write_split(run.split, rows)
    write_text(run.skipped, "".join(f"{bad.split}\t{bad.id}\t{bad.reason}\n" for bad in report.bad))
    if report.bad:
        console.print(f"[yellow]{len(report.bad)} file(s) left out; listed in {run.skipped}[/]")


def fit_stain(config: Config) -> StainNormalization | None:
    """The stain normaliser fitted on ``--stain-target``, read at the training size like every image."""
    data = config.data
    if not data.stain_normalize:
        return None
    try:
        target = load_resized(data.stain_target, data.image_size)
    except (OSError, ValueError) as error:
        raise HistoclassError(f"--stain-target: cannot read '{data.stain_target}' as an image ({error})") from None
    try:
        return StainNormalization.fit(data.stain_normalize, target)
    except ValueError as error:
        raise HistoclassError(f"--stain-target '{data.stain_target}': {error}; choose a well-stained image") from None


def _datasets(
    config: Config, train: ImageRecords, val: ImageRecords, stain: StainNormalization | None
) -> tuple[ImageDataset, ImageDataset]:
    size, cache = config.data.image_size, config.data.cache
    if cache == "none":  # normalised batch by batch in the loader processes
        return ImageDataset(train, size, stain=stain), ImageDataset(val, size, stain=stain)
    with console.status(f"Decoding images into the {cache} cache (once)"):
        pixels = [decoded_cache(records, size, cache) for records in (train, val)]
    if stain is not None:
        with console.status(f"Normalising the stain of {sum(len(p) for p in pixels)} images ({stain.method}, once)"):
            pixels = [stain.apply(p) for p in pixels]  # into memory: a cache on disk stays as the images are
    return ImageDataset(train, size, pixels[0]), ImageDataset(val, size, pixels[1])


def _build_parts(
    config: Config,
    backbone: Backbone,
    classes: list[str],
    train_records: ImageRecords,
    val_records: ImageRecords,
    stain: StainNormalization | None,
) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The module and data the fit runs: images for fine-tuning, cached embeddings for a probe."""
    cfg = config.model
    model = Classifier(backbone, create_head(cfg.head, backbone.num_features, len(classes), cfg.dropout))
    balanced = config.train.class_weights == "balanced"
    weights = _balanced_weights(train_records, len(classes)) if balanced else None
    if config.train.probe:
        return probe_parts(config, model, backbone, len(classes), train_records, val_records, weights)
    module = ClassifierModule(
        model,
        config.train,
        class_weights=weights,
        label_smoothing=config.augment.label_smoothing,
        mixer=create_batch_mixer(config.augment, len(classes)),
        augment=BatchAugment(config.augment, config.train.seed, fill=backbone.mean),
    )
    train_set, val_set = _datasets(config, train_records, val_records, stain)
    data = config.data
    return module, HistoDataModule(train_set, val_set, data.batch_size, data.workers, seed=config.train.seed)


def _typical_side(records: ImageRecords, sample: int = 32) -> int | None:
    """The median longer side of the first training images: what one image covers, for tiling slides."""
    if records.paths is None:
        return int(max(records.array.shape[1:3])) if records.array is not None else None
    sides = []
    for path in records.paths[:sample]:
        with contextlib.suppress(OSError, ValueError), Image.open(path) as image:
            sides.append(max(image.size))
    return int(np.median(sides)) if sides else None


def _model_info(
    config: Config,
    module: L.LightningModule,
    classes: list[str],
    name: str,
    train_records: ImageRecords,
    stain: StainNormalization | None,
) -> ModelInfo:
    model = module.model
    return ModelInfo(
        architecture=config.model.name,
        head=config.model.head,
        dropout=config.model.dropout,
        labels=classes,
        image_size=config.data.image_size,
        mean=list(model.mean),
        std=list(model.std),
        resize=RESIZE_METHOD,
        name=name,
        parameters=count_parameters(model),
        mpp=config.data.train_mpp,
        tile_pixels=_typical_side(train_records) if config.data.train_mpp else None,
        stain=stain,
    )


def fit_run(
    run: RunDir,
    config: Config,
    backbone: Backbone,
    classes: list[str],
    train_records: ImageRecords,
    val_records: ImageRecords,
    stain: StainNormalization | None,
    checkpoint: Path | None = None,
    callbacks: list | None = None,
) -> bool:
    """Fit ``backbone`` + a new head into ``run`` (from ``checkpoint`` when resuming) and finish the run;
    returns whether it finished (not interrupted, and this process writes the run)."""
    run_callbacks = RunCallbacks(config, run)
    module, datamodule = _build_parts(config, backbone, classes, train_records, val_records, stain)
    trainer = build_trainer(config, run, run_callbacks.all(config, run) + (callbacks or []))
    with _shared_run_dir(run):
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
    if trainer.interrupted or run_callbacks.stop.requested:
        raise Interrupted(f"the last checkpoint is saved; continue with histoclass train --resume {run.root}")
    finished = trainer.is_global_zero
    if finished:
        info = _model_info(config, module, classes, run.root.name, train_records, stain)
        finish_run(run, module, info, run_callbacks, config, train_records, val_records)
        console.print(f"Done: results in [bold]{run.root}[/]")
    return finished


@contextlib.contextmanager
def _shared_run_dir(run: RunDir):
    """Expose the run directory to the processes Lightning spawns for the other devices, for the fit only."""
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run.root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
