"""The train job: config -> checked data -> split -> two-phase Lightning fit -> a complete run directory."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from histoclass.atomic import write_csv, write_json, write_text
from histoclass.config import Config, save_config
from histoclass.console import console
from histoclass.data.checks import DataReport, check_source
from histoclass.data.datamodule import HistoDataModule, ImageDataset, build_ram_cache
from histoclass.data.records import ImageRecords
from histoclass.data.sources import read_source
from histoclass.data.splits import groups_from_pattern, split_train_val
from histoclass.data.transforms import create_batch_mixer, create_train_transform
from histoclass.errors import HistoclassError
from histoclass.model_info import ModelInfo, write_labels
from histoclass.models.factory import Classifier, create_backbone
from histoclass.models.heads import create_head
from histoclass.models.serialization import count_parameters, save_model
from histoclass.training.callbacks import (
    AtomicCheckpointIO,
    HistoryWriter,
    ImagesPerSecond,
    PhaseAwareEarlyStopping,
    TwoPhaseFinetuning,
)
from histoclass.training.curves import plot_curves
from histoclass.training.history import read_history
from histoclass.training.module import ClassifierModule
from histoclass.training.rundir import RunPaths, create_run_dir

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


def _trainer_settings(config: Config) -> dict:
    cfg = config.train
    on_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    precision = cfg.precision or ("bf16-mixed" if on_gpu else "32-true")
    return {"accelerator": cfg.accelerator, "devices": cfg.devices, "precision": precision}


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
    size = config.data.image_size
    caches = [None, None]
    if config.data.cache == "ram":
        with console.status("Decoding images into the RAM cache"):
            caches = [build_ram_cache(train, size), build_ram_cache(val, size)]
    transform = create_train_transform(config.augment, size)
    return ImageDataset(train, size, transform, caches[0]), ImageDataset(val, size, None, caches[1])


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


def train(config: Config) -> Path:
    """Train a classifier as ``config`` says and return its run directory."""
    _quiet_lightning()
    started = time.time()
    data, model_cfg = config.data, config.model
    if not data.path:
        raise HistoclassError("--data is required: a class-folder dataset, a labels CSV, an .npz or medmnist:NAME")
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    backbone = create_backbone(model_cfg.name, pretrained=model_cfg.pretrained, weights=model_cfg.weights)
    source = read_source(data.path, data)
    with console.status(f"Checking {sum(len(r) for r in source.splits.values())} images"):
        report = check_source(source)
    _check_classes(report)
    train_records, val_records = split_for_training(report, config)
    _print_split(source.classes, train_records, val_records)

    name = config.run.name or f"{source.name}-{model_cfg.name}"
    run = create_run_dir(config.run.runs_dir, name)
    config = config.model_copy(update={"run": config.run.model_copy(update={"name": run.root.name})})
    _write_run_header(run, config, source.classes, report, train_records, val_records)
    console.print(f"Run directory: [bold]{run.root}[/]")

    model = Classifier(
        backbone, create_head(model_cfg.head, backbone.num_features, len(source.classes), model_cfg.dropout)
    )
    info = ModelInfo(
        architecture=model_cfg.name,
        head=model_cfg.head,
        dropout=model_cfg.dropout,
        labels=source.classes,
        image_size=data.image_size,
        mean=list(backbone.mean),
        std=list(backbone.std),
        name=run.root.name,
        parameters=count_parameters(model),
    )
    weights = (
        _balanced_weights(train_records, len(source.classes)) if config.train.class_weights == "balanced" else None
    )
    module = ClassifierModule(
        model,
        config.train,
        class_weights=weights,
        label_smoothing=config.augment.label_smoothing,
        mixer=create_batch_mixer(config.augment, len(source.classes)),
    )
    train_set, val_set = _datasets(config, train_records, val_records)
    datamodule = HistoDataModule(train_set, val_set, data.batch_size, data.workers)
    phase1 = config.train.phase1_epochs
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoints, filename="best", monitor="val_loss", mode="min", save_last=True, save_top_k=1
    )
    trainer = L.Trainer(
        max_epochs=config.train.epochs,
        callbacks=[
            TwoPhaseFinetuning(phase1, config.train.unfreeze_last),
            PhaseAwareEarlyStopping(phase1, monitor="val_loss", patience=config.train.early_stopping_patience),
            checkpoint,
            HistoryWriter(run.history, phase1),
            ImagesPerSecond(),
            RichProgressBar(),
        ],
        logger=TensorBoardLogger(run.root, name="tensorboard", version=""),
        default_root_dir=run.root,
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        enable_model_summary=False,
        **_trainer_settings(config),
    )
    trainer.fit(module, datamodule=datamodule)
    if trainer.is_global_zero:
        _finish_run(run, module, info, checkpoint.best_model_path, started)
        console.print(f"Done: results in [bold]{run.root}[/]")
    return run.root
