"""The train job: config -> checked data -> split -> two-phase Lightning fit -> a complete run directory."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from histoclass.atomic import write_csv, write_json, write_text
from histoclass.config import Config, save_config
from histoclass.console import console
from histoclass.data.cache import decoded_cache
from histoclass.data.checks import DataReport, check_source
from histoclass.data.datamodule import HistoDataModule, ImageDataset
from histoclass.data.device_transforms import BatchAugment
from histoclass.data.records import ImageRecords
from histoclass.data.sources import read_source
from histoclass.data.splits import groups_from_pattern, split_train_val
from histoclass.data.transforms import create_batch_mixer
from histoclass.errors import HistoclassError
from histoclass.model_info import ModelInfo, write_labels
from histoclass.models.factory import Classifier, create_backbone
from histoclass.models.heads import create_head
from histoclass.models.serialization import count_parameters, save_model
from histoclass.training.callbacks import (
    AtomicCheckpointIO,
    DistributedSummary,
    EpochSeeder,
    GracefulStop,
    HistoryWriter,
    ImagesPerSecond,
    PhaseAwareEarlyStopping,
    TwoPhaseFinetuning,
)
from histoclass.training.curves import plot_curves
from histoclass.training.history import read_history
from histoclass.training.module import ClassifierModule
from histoclass.training.rundir import RUN_DIR_ENV, RunPaths, claim_run_dir, latest_checkpoint

__all__ = ["split_for_training", "train"]


def split_for_training(report: DataReport, config: Config) -> tuple[ImageRecords, ImageRecords]:
    """Train and validation records: the dataset's own val split, else a seeded (group-aware) split."""
    clean = report.clean
    train = clean.get("train", clean.get("all"))
    if train is None:
        raise HistoclassError("--data: the dataset has no train split; point --data at the training data")
    if "val" in clean and len(clean["val"]):
        return train, clean["val"]
    data = config.data
    groups = None
    if data.group_by:
        groups = groups_from_pattern(train.ids, data.group_by)
    elif data.group_column:
        groups = train.groups
    train_index, val_index = split_train_val(train, data.val_fraction, config.train.seed, groups)
    return train.subset(train_index), train.subset(val_index)


def _print_split(classes: list[str], train: ImageRecords, val: ImageRecords) -> None:
    from rich.table import Table

    table = Table(title="Split (images per class)")
    for column in ("class", "train", "val"):
        table.add_column(column, justify="left" if column == "class" else "right")
    train_counts, val_counts = train.class_counts(len(classes)), val.class_counts(len(classes))
    for name, n_train, n_val in zip(classes, train_counts, val_counts, strict=True):
        table.add_row(name, str(n_train), str(n_val))
    table.add_row("total", str(len(train)), str(len(val)), style="bold")
    console.print(table)


def _check_classes(report: DataReport) -> None:
    empty = report.empty_classes()
    if empty:
        raise HistoclassError(
            f"class {', '.join(repr(c) for c in empty)} has no readable image; add images or remove the class"
        )


def _balanced_weights(train: ImageRecords, num_classes: int) -> torch.Tensor:
    counts = train.class_counts(num_classes).astype(np.float64)
    return torch.tensor(counts.sum() / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def _device_count(config: Config, on_gpu: bool) -> int:
    devices = config.train.devices
    if devices == "auto":
        return torch.cuda.device_count() if on_gpu else 1
    return len([d for d in devices.split(",") if d.strip()]) if "," in devices else int(devices)


def _trainer_settings(config: Config) -> dict:
    """Accelerator, devices, precision and strategy: bf16 on GPUs, and DDP that tolerates frozen blocks."""
    cfg = config.train
    on_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    precision = cfg.precision or ("bf16-mixed" if on_gpu else "32-true")
    several = _device_count(config, on_gpu) * cfg.num_nodes > 1
    strategy = cfg.strategy or ("ddp_find_unused_parameters_true" if several else "auto")
    return {"accelerator": cfg.accelerator, "devices": cfg.devices, "precision": precision, "strategy": strategy}


def _write_run_header(
    run: RunPaths, config: Config, classes: list[str], report: DataReport, train: ImageRecords, val: ImageRecords
) -> None:
    """Config, labels, the exact split and the skipped files: what reproduces the run."""
    save_config(config, run.config)
    write_labels(run.labels, classes)
    rows = [
        (i, classes[k], name)
        for name, part in (("train", train), ("val", val))
        for i, k in zip(part.ids, part.labels, strict=True)
    ]
    write_csv(run.split, ["id", "label", "split"], rows)
    lines = [f"{bad.split}\t{bad.id}\t{bad.reason}\n" for bad in report.bad]
    write_text(run.skipped, "".join(lines))
    if report.bad:
        console.print(f"[yellow]{len(report.bad)} unreadable file(s) left out; listed in {run.skipped}[/]")


def _datasets(config: Config, train: ImageRecords, val: ImageRecords) -> tuple[ImageDataset, ImageDataset]:
    size, cache = config.data.image_size, config.data.cache
    if cache == "none":
        return ImageDataset(train, size), ImageDataset(val, size)
    with console.status(f"Decoding images into the {cache} cache (once)"):
        return (
            ImageDataset(train, size, decoded_cache(train, size, cache)),
            ImageDataset(val, size, decoded_cache(val, size, cache)),
        )


def _finish_run(run: RunPaths, module: ClassifierModule, info: ModelInfo, best: str, started: float) -> Path:
    """Best weights -> model.safetensors/model.json, best epoch -> metrics.json, history -> curves."""
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state, strict=False)
    save_model(module.model, info, run.root)
    rows = read_history(run.history)
    best_row = min(rows, key=lambda r: float(r["val_loss"]))
    metrics = {key: float(value) for key, value in best_row.items() if key not in ("epoch", "phase", "seconds")}
    metrics |= {
        "best_epoch": int(best_row["epoch"]),
        "epochs_run": len(rows),
        "train_seconds": round(time.time() - started, 1),
    }
    write_json(run.metrics, metrics)
    plot_curves(rows, run.plots / "curves.png")
    return run.root


def _quiet_lightning() -> None:
    """Keep Lightning's banners and tips out of the user's terminal; warnings and errors still show."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def _build_model(config: Config, backbone, classes: list[str], train_records: ImageRecords) -> ClassifierModule:
    cfg = config.model
    model = Classifier(backbone, create_head(cfg.head, backbone.num_features, len(classes), cfg.dropout))
    balanced = config.train.class_weights == "balanced"
    return ClassifierModule(
        model,
        config.train,
        class_weights=_balanced_weights(train_records, len(classes)) if balanced else None,
        label_smoothing=config.augment.label_smoothing,
        mixer=create_batch_mixer(config.augment, len(classes)),
        augment=BatchAugment(config.augment, config.train.seed),
    )


def _model_info(config: Config, module: ClassifierModule, classes: list[str], name: str) -> ModelInfo:
    model = module.model
    return ModelInfo(
        architecture=config.model.name,
        head=config.model.head,
        dropout=config.model.dropout,
        labels=classes,
        image_size=config.data.image_size,
        mean=list(model.mean),
        std=list(model.std),
        name=name,
        parameters=count_parameters(model),
    )


def _trainer(config: Config, run: RunPaths, extra: list | None = None) -> tuple[L.Trainer, ModelCheckpoint]:
    cfg = config.train
    phase1 = cfg.phase1_epochs
    best = ModelCheckpoint(dirpath=run.checkpoints, filename="best", monitor="val_loss", mode="min", save_top_k=1)
    # Every epoch, improved or not (``save_last`` only copies a checkpoint that was saved anyway): what --resume
    # continues from.
    last = ModelCheckpoint(dirpath=run.checkpoints, filename="last", monitor=None, enable_version_counter=False)
    callbacks = [
        EpochSeeder(cfg.seed),
        TwoPhaseFinetuning(phase1, cfg.unfreeze_last),
        PhaseAwareEarlyStopping(phase1, monitor="val_loss", patience=cfg.early_stopping_patience),
        best,
        last,
        HistoryWriter(run.history, phase1),
        GracefulStop(run.checkpoints / "last.ckpt"),
        DistributedSummary(config.data.batch_size, cfg.lr, cfg.scale_lr),
        ImagesPerSecond(),
        RichProgressBar(),
        *(extra or []),
    ]
    if cfg.checkpoint_every_steps:
        callbacks.append(
            ModelCheckpoint(
                dirpath=run.checkpoints,
                filename="step-{epoch}-{step}",
                every_n_train_steps=cfg.checkpoint_every_steps,
                save_top_k=1,
                monitor=None,
            )
        )
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        num_nodes=cfg.num_nodes,
        sync_batchnorm=cfg.sync_batchnorm,
        callbacks=callbacks,
        logger=TensorBoardLogger(run.root, name="tensorboard", version=""),
        default_root_dir=run.root,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        enable_model_summary=False,
        **_trainer_settings(config),
    )
    return trainer, best


def _resumed_config(resume: str | Path) -> tuple[Config, RunPaths, Path]:
    from histoclass.config import build_config

    run = RunPaths(Path(resume))
    if not run.config.is_file():
        raise HistoclassError(f"--resume: '{resume}' is not a run directory (no config.yaml)")
    checkpoint = latest_checkpoint(run)
    return build_config(yaml.safe_load(run.config.read_text())), run, checkpoint


def _same_split(run: RunPaths, val: ImageRecords) -> None:
    with open(run.split, newline="") as handle:
        recorded = sorted(row["id"] for row in csv.DictReader(handle) if row["split"] == "val")
    if recorded != sorted(val.ids):
        raise HistoclassError(f"--resume: the data behind '{run.root}' changed since the run started; start a new run")


def train(config: Config | None = None, resume: str | Path | None = None, callbacks: list | None = None) -> Path:
    """Train a classifier as ``config`` says (or continue the run ``resume``) and return its run directory.

    ``callbacks``: extra Lightning callbacks (the benchmark's timer, say).
    """
    _quiet_lightning()
    started = time.time()
    checkpoint = None
    if resume is not None:
        config, run, checkpoint = _resumed_config(resume)
        console.print(f"Resuming [bold]{run.root}[/] from {checkpoint.name}")
    data = config.data
    if not data.path:
        raise HistoclassError("--data is required: a class-folder dataset, a labels CSV, an .npz or medmnist:NAME")
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    backbone = create_backbone(config.model.name, pretrained=config.model.pretrained, weights=config.model.weights)
    source = read_source(data.path, data)
    with console.status(f"Checking {sum(len(r) for r in source.splits.values())} images"):
        report = check_source(source)
    _check_classes(report)
    train_records, val_records = split_for_training(report, config)
    if resume is None:
        _print_split(source.classes, train_records, val_records)
        run, writer = claim_run_dir(config.run.runs_dir, config.run.name or f"{source.name}-{config.model.name}")
        config = config.model_copy(update={"run": config.run.model_copy(update={"name": run.root.name})})
        if writer:
            _write_run_header(run, config, source.classes, report, train_records, val_records)
            console.print(f"Run directory: [bold]{run.root}[/]")
    else:
        _same_split(run, val_records)
    module = _build_model(config, backbone, source.classes, train_records)
    train_set, val_set = _datasets(config, train_records, val_records)
    datamodule = HistoDataModule(train_set, val_set, data.batch_size, data.workers, seed=config.train.seed)
    trainer, best = _trainer(config, run, callbacks)
    with _shared_run_dir(run):
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
    if trainer.is_global_zero and not trainer.interrupted and not _stopped_early_by_signal(trainer):
        _finish_run(
            run, module, _model_info(config, module, source.classes, run.root.name), best.best_model_path, started
        )
        console.print(f"Done: results in [bold]{run.root}[/]")
    return run.root


def _stopped_early_by_signal(trainer: L.Trainer) -> bool:
    return any(isinstance(c, GracefulStop) and c.requested for c in trainer.callbacks)


@contextlib.contextmanager
def _shared_run_dir(run: RunPaths):
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
