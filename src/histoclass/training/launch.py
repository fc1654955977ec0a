"""The train job once its inputs are known to exist: seed, backbone, image check, split, run
directory, fit(s)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from histoclass.config import RECIPE_IMAGE_SIZE, Config, check_progressive_resize
from histoclass.console import console
from histoclass.data.checks import DataReport, check_source
from histoclass.data.records import DataSource
from histoclass.errors import HistoclassError
from histoclass.heap import keep_freed_memory
from histoclass.models.factory import Backbone, create_backbone
from histoclass.runs import RunDir, claim_run_dir
from histoclass.training.fit import fit_run, fit_stain, write_run_header
from histoclass.training.folds import train_folds
from histoclass.training.plan import TrainingPlan
from histoclass.training.resume import resume_checkpoint
from histoclass.training.split import print_split, recorded_split, split_for_training
from histoclass.training.trainer import quiet_lightning

__all__ = ["launch"]


def _check_classes(report: DataReport) -> None:
    empty = report.empty_classes()
    if empty:
        raise HistoclassError(
            f"class {', '.join(repr(c) for c in empty)} has no readable image; add images or remove the class"
        )


def _with_image_size(config: Config, backbone: Backbone) -> Config:
    """An input size left open becomes the backbone's own where its weights fix one, else the recipe's; the
    run's config.yaml records the number."""
    if config.data.image_size is not None:
        return config
    size = backbone.input_size or RECIPE_IMAGE_SIZE
    try:
        check_progressive_resize(config.train.progressive_resize, size)
    except ValueError as error:
        raise HistoclassError(str(error)) from None
    return config.model_copy(update={"data": config.data.model_copy(update={"image_size": size})})


def launch(
    config: Config, source: DataSource, resumed: RunDir | None, callbacks: list | None
) -> Path:
    """Train as ``config`` says on ``source`` (or continue the run ``resumed``); returns the run directory."""
    quiet_lightning()
    keep_freed_memory()
    run, checkpoint = resumed, None
    if resumed:
        checkpoint = resume_checkpoint(resumed) if config.train.folds == 1 else None
        console.print(
            f"Resuming [bold]{resumed.root}[/]" + (f" from {checkpoint.name}" if checkpoint else "")
        )
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    model = config.model
    backbone = create_backbone(
        model.name, pretrained=model.pretrained, weights=model.weights, drop_path=model.drop_path
    )
    config = _with_image_size(config, backbone)
    stain = fit_stain(config)  # a bad --stain-target is reported before a run directory is made
    with console.status(f"Checking {sum(len(r) for r in source.splits.values())} images"):
        report = check_source(source)
    _check_classes(report)
    writer = False
    if run is None:
        train_records, val_records = split_for_training(report, config)
        print_split(source.classes, train_records, val_records)
        run, writer = claim_run_dir(
            config.run.runs_dir, config.run.name or f"{source.name}-{config.model.name}"
        )
        config = config.model_copy(
            update={"run": config.run.model_copy(update={"name": run.root.name})}
        )
    else:
        train_records, val_records = recorded_split(report, run)
    framing = config.data.framing
    plan = TrainingPlan(
        config,
        run,
        backbone,
        report,
        train_records.framed(framing),
        val_records.framed(framing),
        stain,
        checkpoint,
        tuple(callbacks or ()),
    )
    if writer:
        write_run_header(plan)
        console.print(f"Run directory: [bold]{run.root}[/]")
    if config.train.folds > 1:
        train_folds(plan)
    else:
        fit_run(plan)
    return run.root
