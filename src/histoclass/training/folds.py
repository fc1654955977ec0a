"""``train --folds K``: K cross-validation folds, one complete run directory each, and their ensemble as the
run's model.

The run's validation split (the one a single run would validate on) is held out from every fold. The
folds split the rest into K group-aware parts; fold k trains on the other parts and picks its
checkpoint on part k. The ensemble (the mean of the folds' probabilities) never saw the held-out
split, so it is calibrated and scored there. ``metrics.json`` holds the ensemble's figures at the
top, like a single run's, and the folds' own validation figures as mean ± sd. An interrupted run
resumes at the fold it stopped in.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np

from histoclass.atomic import write_bytes, write_json
from histoclass.calibration.temperature import calibrated_probabilities
from histoclass.config import Config
from histoclass.console import console
from histoclass.data.checks import DataReport
from histoclass.data.records import ImageRecords
from histoclass.data.splits import fold_numbers
from histoclass.errors import Interrupted
from histoclass.evaluation.metrics import compute_metrics
from histoclass.models.ensemble import Ensemble
from histoclass.models.serialization import count_parameters, load_model, save_model
from histoclass.runs import Calibration, ModelInfo, RunDir
from histoclass.runs.checkpoints import resume_candidates
from histoclass.training.finish import calibrate_on_validation, validation_logits
from histoclass.training.fit import fit_run, write_run_header
from histoclass.training.plan import TrainingPlan
from histoclass.training.resume import resume_checkpoint
from histoclass.training.split import recorded_split

__all__ = ["FOLD_KEYS", "train_folds"]

#: The per-fold figures summarised as mean ± sd.
FOLD_KEYS = (
    "val_accuracy",
    "val_macro_f1",
    "val_macro_precision",
    "val_macro_recall",
    "val_loss",
    "best_epoch",
)
#: The ensemble's figures on the held-out split, named as a single run names its validation figures.
ENSEMBLE_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "roc_auc",
    "log_loss",
)


def _fold_config(config: Config, k: int) -> Config:
    """Fold ``k``'s config: one process (folds run one after another), its own seed, its run under
    ``folds/``."""
    train = config.train.model_copy(
        update={"folds": 1, "seed": config.train.seed + k - 1, "devices": "1"},
    )
    run = config.run.model_copy(
        update={
            "name": str(k),
            "runs_dir": str(Path(config.run.runs_dir) / str(config.run.name) / "folds"),
        }
    )
    return config.model_copy(update={"train": train, "run": run})


def _fold_records(
    fold: RunDir, k: int, numbers: np.ndarray, pool: ImageRecords, report: DataReport
) -> tuple[ImageRecords, ImageRecords]:
    """Fold ``k``'s training and validation images: as its ``split.csv`` recorded them once it has one."""
    if fold.split.is_file():
        train, val = recorded_split(report, fold)
        return train.framed(pool.framing), val.framed(pool.framing)
    return pool.subset(np.flatnonzero(numbers != k - 1)), pool.subset(
        np.flatnonzero(numbers == k - 1)
    )


def train_folds(plan: TrainingPlan) -> None:
    """Train the folds not finished yet into ``run/folds/k``, then save and score their ensemble: the plan's
    training images are the folds' pool, its validation images the held-out split."""
    run, config, pool = plan.run, plan.config, plan.train_records
    folds = config.train.folds
    numbers = fold_numbers(pool.labels, folds, config.train.seed, pool.groups)
    for k in range(1, folds + 1):
        fold = run.fold(k)
        if fold.is_trained():
            console.print(f"fold {k} of {folds}: finished before, kept")
            continue
        train_records, val_records = _fold_records(fold, k, numbers, pool, plan.report)
        checkpoint = resume_checkpoint(fold) if resume_candidates(fold) else None
        fold_plan = plan.fold(fold, _fold_config(config, k), train_records, val_records, checkpoint)
        if checkpoint is None:
            fold.root.mkdir(parents=True, exist_ok=True)
            write_run_header(fold_plan)
        console.rule(
            f"fold {k} of {folds}: {len(train_records)} training images, {len(val_records)} validating"
        )
        L.seed_everything(fold_plan.config.train.seed, workers=True, verbose=False)
        try:
            finished = fit_run(fold_plan)
        except Interrupted:  # the folds resume together, from the ensemble's run directory
            raise Interrupted(
                f"the last checkpoint is saved; continue with histoclass train --resume {run.root}"
            ) from None
        if not finished:
            return
    _finish_ensemble(run, config, plan.val_records)


def _fold_summary(per_fold: list[dict]) -> dict:
    """Mean and sample sd of each :data:`FOLD_KEYS` figure across the folds, and each fold's own."""
    keys = [key for key in FOLD_KEYS if all(isinstance(m.get(key), int | float) for m in per_fold)]
    values = {key: np.array([float(m[key]) for m in per_fold]) for key in keys}
    return {
        "count": len(per_fold),
        "mean": {key: float(v.mean()) for key, v in values.items()},
        "sd": {key: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for key, v in values.items()},
        "per_fold": [{key: m[key] for key in keys} for m in per_fold],
    }


def _finish_ensemble(run: RunDir, config: Config, held_out: ImageRecords) -> None:
    """The folds' mean as the run's model, calibrated and scored on the held-out split; metrics.json."""
    folds = config.train.folds
    ensemble = Ensemble([load_model(run.fold(k).root)[0] for k in range(1, folds + 1)])
    update = {"members": folds, "name": run.root.name, "parameters": count_parameters(ensemble)}
    info = ModelInfo.load(run.fold(1).model_info).model_copy(
        update={**update, "calibration": Calibration()}
    )
    save_model(ensemble, info, run.root)
    if run.fold(1).shift_reference.is_file():  # the ensemble's shift score is its first member's
        write_bytes(run.shift_reference, run.fold(1).shift_reference.read_bytes())
    logits, labels = validation_logits(run, held_out)
    calibration = calibrate_on_validation(run, info, logits, labels, config)
    scores = compute_metrics(labels, calibrated_probabilities(logits), info.labels)
    per_fold = [json.loads(run.fold(k).metrics.read_text()) for k in range(1, folds + 1)]
    summary = _fold_summary(per_fold)
    metrics = {
        **{f"val_{key}": scores[key] for key in ENSEMBLE_KEYS},
        "folds": summary,
        "calibration": calibration,
        "train_seconds": round(sum(m.get("train_seconds", 0.0) for m in per_fold), 1),
    }
    write_json(run.metrics, metrics)
    mean, sd = summary["mean"]["val_accuracy"], summary["sd"]["val_accuracy"]
    console.print(
        f"{folds} folds: validation accuracy {mean:.3f} ± {sd:.3f} (each on its own fold); ensemble "
        f"{scores['accuracy']:.3f} on the {len(labels)} held-out images none of the folds trained on"
    )
    console.print(f"Done: ensemble of {folds} folds in [bold]{run.root}[/]")
