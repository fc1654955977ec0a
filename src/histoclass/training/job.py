"""The train job: config -> checked data -> split -> two-phase Lightning fit -> a complete run directory."""

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
from histoclass.data.checks import DataReport, check_source
from histoclass.data.dataset import ImageDataset
from histoclass.data.device_transforms import BatchAugment
from histoclass.data.images import RESIZE_METHOD
from histoclass.data.records import ImageRecords
from histoclass.data.sources import read_source
from histoclass.data.transforms import create_batch_mixer
from histoclass.errors import HistoclassError
from histoclass.models.factory import Backbone, Classifier, create_backbone
from histoclass.models.heads import create_head
from histoclass.models.serialization import count_parameters
from histoclass.runs import RUN_DIR_ENV, ModelInfo, RunDir, claim_run_dir, write_labels
from histoclass.runs.config_file import read_run_config, write_run_config
from histoclass.runs.split import SplitRow, write_split
from histoclass.training.datamodule import HistoDataModule
from histoclass.training.finish import finish_run
from histoclass.training.module import ClassifierModule
from histoclass.training.probe import probe_parts
from histoclass.training.resume import resume_checkpoint
from histoclass.training.split import print_split, recorded_split, split_for_training
from histoclass.training.trainer import RunCallbacks, build_trainer, quiet_lightning

__all__ = ["train"]


def _check_classes(report: DataReport) -> None:
    empty = report.empty_classes()
    if empty:
        raise HistoclassError(
            f"class {', '.join(repr(c) for c in empty)} has no readable image; add images or remove the class"
        )


def _balanced_weights(train: ImageRecords, num_classes: int) -> torch.Tensor:
    counts = train.class_counts(num_classes).astype(np.float64)
    return torch.tensor(counts.sum() / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def _write_run_header(
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


def _datasets(config: Config, train: ImageRecords, val: ImageRecords) -> tuple[ImageDataset, ImageDataset]:
    size, cache = config.data.image_size, config.data.cache
    if cache == "none":
        return ImageDataset(train, size), ImageDataset(val, size)
    with console.status(f"Decoding images into the {cache} cache (once)"):
        return (
            ImageDataset(train, size, decoded_cache(train, size, cache)),
            ImageDataset(val, size, decoded_cache(val, size, cache)),
        )


def _build_parts(
    config: Config, backbone: Backbone, classes: list[str], train_records: ImageRecords, val_records: ImageRecords
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
    train_set, val_set = _datasets(config, train_records, val_records)
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
    config: Config, module: L.LightningModule, classes: list[str], name: str, train_records: ImageRecords
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
    )


def train(config: Config, callbacks: list | None = None) -> Path:
    """Train a classifier as ``config`` says (or continue the run ``config.run.resume``); returns the run directory.

    ``callbacks``: extra Lightning callbacks (the benchmark's timer, say).
    """
    quiet_lightning()
    checkpoint = None
    if config.run.resume:
        run = RunDir(Path(config.run.resume))
        config = read_run_config(run)
        checkpoint = resume_checkpoint(run)
        console.print(f"Resuming [bold]{run.root}[/] from {checkpoint.name}")
    data = config.data
    if not data.path:
        raise HistoclassError("--data is required: a class-folder dataset, a labels CSV, an .npz or medmnist:NAME")
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    model = config.model
    backbone = create_backbone(
        model.name, pretrained=model.pretrained, weights=model.weights, drop_path=model.drop_path
    )
    source = read_source(data.path, data)
    with console.status(f"Checking {sum(len(r) for r in source.splits.values())} images"):
        report = check_source(source)
    _check_classes(report)
    if checkpoint is None:
        train_records, val_records = split_for_training(report, config)
        print_split(source.classes, train_records, val_records)
        run, writer = claim_run_dir(config.run.runs_dir, config.run.name or f"{source.name}-{config.model.name}")
        config = config.model_copy(update={"run": config.run.model_copy(update={"name": run.root.name})})
        if writer:
            _write_run_header(run, config, source.classes, report, train_records, val_records)
            console.print(f"Run directory: [bold]{run.root}[/]")
    else:
        train_records, val_records = recorded_split(report, run)
    run_callbacks = RunCallbacks(config, run)
    module, datamodule = _build_parts(config, backbone, source.classes, train_records, val_records)
    trainer = build_trainer(config, run, run_callbacks.all(config, run) + (callbacks or []))
    with _shared_run_dir(run):
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
    if trainer.is_global_zero and not trainer.interrupted and not run_callbacks.stop.requested:
        info = _model_info(config, module, source.classes, run.root.name, train_records)
        finish_run(run, module, info, run_callbacks, config, val_records)
        console.print(f"Done: results in [bold]{run.root}[/]")
    return run.root


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
