"""Fitting one run directory: backbone + new head trained by Lightning on given training and
validation images, then finished (best weights saved, calibrated, metrics written). The train job
calls it once, or once per fold."""

from __future__ import annotations

import contextlib
import os

import lightning as L
import numpy as np
import torch
from PIL import Image

from histoclass.atomic import write_text
from histoclass.config import Config
from histoclass.console import console
from histoclass.data.cache import decoded_cache, fitting_cache
from histoclass.data.dataset import ImageDataset
from histoclass.data.device_transforms import BatchAugment
from histoclass.data.images import RESIZE_METHOD, load_resized
from histoclass.data.records import ImageRecords
from histoclass.data.stain_normalize import StainNormalization
from histoclass.data.transforms import create_batch_mixer
from histoclass.errors import HistoclassError, Interrupted
from histoclass.models.factory import Classifier
from histoclass.models.heads import create_head
from histoclass.models.serialization import count_parameters
from histoclass.runs import RUN_DIR_ENV, ModelInfo, RunDir, write_labels
from histoclass.runs.config_file import write_run_config
from histoclass.runs.split import SplitRow, write_split
from histoclass.training.datamodule import HistoDataModule
from histoclass.training.finish import finish_run
from histoclass.training.loggers import record_tracking
from histoclass.training.module import ClassifierModule
from histoclass.training.plan import TrainingPlan
from histoclass.training.probe import probe_parts
from histoclass.training.resizing import describe_sides, epoch_sides
from histoclass.training.trainer import (
    RunCallbacks,
    build_trainer,
    device_count,
    on_gpu_training,
)

__all__ = ["fit_run", "fit_stain", "write_run_header"]


def _balanced_weights(train: ImageRecords, num_classes: int) -> torch.Tensor:
    counts = train.class_counts(num_classes).astype(np.float64)
    return torch.tensor(counts.sum() / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def write_run_header(plan: TrainingPlan) -> None:
    """Config, labels, the exact split and the skipped files: what reproduces the run."""
    run, classes, report = plan.run, plan.classes, plan.report
    train, val = plan.train_records, plan.val_records
    write_run_config(run, plan.config)
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
        target = load_resized(data.stain_target, data.image_size, data.framing)
    except (OSError, ValueError) as error:
        raise HistoclassError(
            f"--stain-target: cannot read '{data.stain_target}' as an image ({error})"
        ) from None
    try:
        return StainNormalization.fit(data.stain_normalize, target)
    except ValueError as error:
        raise HistoclassError(
            f"--stain-target '{data.stain_target}': {error}; choose a well-stained image"
        ) from None


def _cache_kind(plan: TrainingPlan, on_gpu: bool) -> str:
    """The run's decoded cache: ``--cache`` as given, or ``auto``'s choice (said once)."""
    config = plan.config
    if config.data.cache != "auto":
        return config.data.cache
    images = len(plan.train_records) + len(plan.val_records)
    copies = device_count(config, on_gpu)
    kind, reason = fitting_cache(images, config.data.image_size, copies)
    console.print(f"Images: {reason}")
    return kind


def _datasets(plan: TrainingPlan, cache: str) -> tuple[ImageDataset, ImageDataset]:
    train, val, stain = plan.train_records, plan.val_records, plan.stain
    size = plan.config.data.image_size
    if cache == "none":  # normalised batch by batch in the loader processes
        return ImageDataset(train, size, stain=stain), ImageDataset(val, size, stain=stain)
    with console.status(f"Decoding images into the {cache} cache (once)"):
        pixels = [decoded_cache(records, size, cache) for records in (train, val)]
    if stain is not None:
        with console.status(
            f"Normalising the stain of {sum(len(p) for p in pixels)} images ({stain.method}, once)"
        ):
            # into memory: a cache on disk stays as the images are
            pixels = [stain.apply(p) for p in pixels]
    return ImageDataset(train, size, pixels[0]), ImageDataset(val, size, pixels[1])


def _build_parts(plan: TrainingPlan) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The module and data the fit runs: images for fine-tuning, cached embeddings for a probe."""
    config, backbone, classes = plan.config, plan.backbone, plan.classes
    cfg = config.model
    model = Classifier(
        backbone, create_head(cfg.head, backbone.num_features, len(classes), cfg.dropout)
    )
    balanced = config.train.class_weights == "balanced"
    weights = _balanced_weights(plan.train_records, len(classes)) if balanced else None
    if config.train.probe:
        return probe_parts(
            config, model, backbone, len(classes), plan.train_records, plan.val_records, weights
        )
    module = ClassifierModule(
        model,
        config.train,
        class_weights=weights,
        label_smoothing=config.augment.label_smoothing,
        mixer=create_batch_mixer(config.augment, len(classes)),
        augment=BatchAugment(config.augment, config.train.seed, fill=backbone.mean),
        sides=_epoch_sides(config),
    )
    on_gpu = on_gpu_training(config)
    cache = _cache_kind(plan, on_gpu)
    train_set, val_set = _datasets(plan, cache)
    data, workers = config.data, config.data.workers
    if workers is None and cache != "none" and not on_gpu:
        # Reading a cached batch is a copy: a loader process would add only the transfer, and take a
        # core from the step (~10% faster on 2 cores; docs/benchmarks.md, issue 34).
        workers = 0
    return module, HistoDataModule(
        train_set, val_set, data.batch_size, workers, seed=config.train.seed
    )


def _epoch_sides(config: Config) -> list[int] | None:
    """Progressive resizing's side for each epoch (said once), or none."""
    if config.train.progressive_resize is None:
        return None
    sides = epoch_sides(
        config.train.progressive_resize, config.data.image_size, config.train.epochs
    )
    console.print(f"Progressive resizing: {describe_sides(sides)}")
    return sides


def _typical_side(records: ImageRecords, sample: int = 32) -> int | None:
    """The median longer side of the first training images: what one image covers, for tiling slides."""
    if records.paths is None:
        return int(max(records.array.shape[1:3])) if records.array is not None else None
    sides = []
    for path in records.paths[:sample]:
        with contextlib.suppress(OSError, ValueError), Image.open(path) as image:
            sides.append(max(image.size))
    return int(np.median(sides)) if sides else None


def _model_info(plan: TrainingPlan, module: L.LightningModule) -> ModelInfo:
    model, config = module.model, plan.config
    return ModelInfo(
        architecture=config.model.name,
        head=config.model.head,
        dropout=config.model.dropout,
        labels=plan.classes,
        image_size=config.data.image_size,
        mean=list(model.mean),
        std=list(model.std),
        resize=RESIZE_METHOD,
        framing=config.data.framing,
        name=plan.run.root.name,
        parameters=count_parameters(model),
        mpp=config.data.train_mpp,
        tile_pixels=_typical_side(plan.train_records) if config.data.train_mpp else None,
        stain=plan.stain,
    )


def fit_run(plan: TrainingPlan) -> bool:
    """Fit the plan's backbone + a new head into its run (from its checkpoint when resuming) and finish the
    run; returns whether it finished (not interrupted, and this process writes the run)."""
    run, config = plan.run, plan.config
    run_callbacks = RunCallbacks(config, run)
    module, datamodule = _build_parts(plan)
    trainer = build_trainer(config, run, run_callbacks.all(config, run) + list(plan.callbacks))
    with _shared_run_dir(run):
        trainer.fit(module, datamodule=datamodule, ckpt_path=plan.checkpoint)
    if trainer.interrupted or run_callbacks.stop.requested:
        raise Interrupted(
            f"the last checkpoint is saved; continue with histoclass train --resume {run.root}"
        )
    finished = trainer.is_global_zero
    if finished:
        finish_run(plan, module, _model_info(plan, module), run_callbacks)
        record_tracking(trainer.logger, config, run)
        console.print(f"Done: results in [bold]{run.root}[/]")
    return finished


@contextlib.contextmanager
def _shared_run_dir(run: RunDir):
    """Expose the run directory to the processes Lightning starts for the other devices, for the fit only: its
    launcher runs the command line again in each, so the environment is the one way in (as for its ranks)."""
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run.root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
