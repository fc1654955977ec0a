"""Finishing a run: the best weights become the run's model, calibrated on the validation split, and the
metrics, curves and reasons for stopping are written."""

from __future__ import annotations

import numpy as np
import torch

from histoclass.atomic import write_json
from histoclass.calibration.fit import fit_calibration
from histoclass.calibration.temperature import calibrated_probabilities, negative_log_likelihood
from histoclass.config import Config, InferenceOptions
from histoclass.console import console
from histoclass.data.records import ImageRecords
from histoclass.deploy import open_predictor
from histoclass.evaluation.curves import plot_curves
from histoclass.evaluation.metrics import expected_calibration_error
from histoclass.inference.preprocess import DIHEDRAL_VIEWS
from histoclass.models.serialization import save_model
from histoclass.runs import ModelInfo, RunDir
from histoclass.runs.history import read_history
from histoclass.shift.scorer import build_reference
from histoclass.training.callbacks import AtomicCheckpointIO
from histoclass.training.module import ClassifierModule
from histoclass.training.plan import TrainingPlan
from histoclass.training.probe import ProbeModule
from histoclass.training.trainer import RunCallbacks

__all__ = [
    "CONVERT_FROM",
    "calibrate_on_validation",
    "finish_run",
    "validation_engine",
    "validation_logits",
]

#: Image passes (images x test-time views) from which a CPU predicts the validation split on a
#: converted engine: converting and checking it takes ~20 s, and ONNX Runtime then passes a 128 px
#: run's 2,013 x 8 views in 88 s against PyTorch's 227 s (2-core AMD EPYC; docs/benchmarks.md).
CONVERT_FROM = 5000


def _stop_summary(callbacks: RunCallbacks, rows: list[dict], config: Config) -> dict:
    """Whether early stopping ended the run, and why, in words and as metrics."""
    early = callbacks.early
    if not early.stopped_epoch or len(rows) >= config.train.epochs:
        return {"stopped_early": False, "stop_reason": ""}
    best = min(rows, key=lambda r: float(r["val_loss"]))
    reason = (
        f"val_loss did not improve for {early.patience} epochs after epoch {best['epoch']} "
        f"(best {float(best['val_loss']):.4f}); stopped after epoch {len(rows)} of {config.train.epochs}"
    )
    return {"stopped_early": True, "stop_reason": reason}


def validation_engine(images: int, views: int) -> str:
    """PyTorch on a GPU or for a short pass; on a CPU from :data:`CONVERT_FROM` image passes, the
    engine ``predict`` picks (``auto``), converted once and kept in the run for its later use."""
    short = images * views < CONVERT_FROM
    return "torch" if short or torch.cuda.is_available() else "auto"


def validation_logits(run: RunDir, records: ImageRecords) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits (N x views x C) of the saved model on the validation images, through the inference
    path, with the default test-time views; and the images' labels."""
    tta = InferenceOptions().tta
    engine = validation_engine(len(records), DIHEDRAL_VIEWS if tta else 1)
    predictor = open_predictor(run.root, engine, shift=False)
    indices, logits = [], []
    with console.status("Predicting the validation split"):
        for batch in predictor.predict_records(records, tta=tta):
            indices += batch.indices
            logits.append(batch.view_logits)
    return np.concatenate(logits), records.labels[np.asarray(indices, dtype=np.int64)]


def calibrate_on_validation(
    run: RunDir, info: ModelInfo, logits: np.ndarray, labels: np.ndarray, config: Config
) -> dict:
    """Fit temperature and prediction sets on the validation split's :func:`validation_logits`,
    store them in the run's model description, and return the before/after figures for
    ``metrics.json``."""
    calibration = fit_calibration(logits, labels, config.train.coverage, config.train.mondrian)
    info.model_copy(update={"calibration": calibration}).save(run.model_info)
    before, after = (
        calibrated_probabilities(logits),
        calibrated_probabilities(logits, calibration.temperature),
    )
    figures = {
        "temperature": calibration.temperature,
        "ece_before": expected_calibration_error(labels, before),
        "ece_after": expected_calibration_error(labels, after),
        "log_loss_before": negative_log_likelihood(logits, labels, 1.0),
        "log_loss_after": negative_log_likelihood(logits, labels, calibration.temperature),
        "coverage_target": calibration.coverage,
        "tta": calibration.tta,
    }
    console.print(
        f"Calibration on {len(labels)} validation images: temperature {calibration.temperature:.2f}, "
        f"ECE {figures['ece_before']:.3f} -> {figures['ece_after']:.3f}"
    )
    return figures


def finish_run(
    plan: TrainingPlan, module: ClassifierModule, info: ModelInfo, callbacks: RunCallbacks
) -> None:
    """Best weights -> the run's model files (calibrated, with the shift score's reference), best epoch ->
    metrics.json, history -> curves."""
    run, config = plan.run, plan.config
    if run.best_checkpoint.is_file():
        # Read through the trainer's own checkpoint IO (weights only).
        # ``trainer.validate(ckpt_path=...)`` would load it too, but runs on every DDP process while
        # this runs on rank 0 alone, after the fit.
        state = AtomicCheckpointIO().load_checkpoint(run.best_checkpoint)["state_dict"]
        module.load_state_dict(state, strict=False)
    save_model(module.evaluated, info, run.root)
    rows = read_history(run.history)
    best_row = min(rows, key=lambda r: float(r["val_loss"]))
    metrics = {
        key: float(value)
        for key, value in best_row.items()
        if key not in ("epoch", "phase", "seconds")
    }
    stopped = _stop_summary(callbacks, rows, config)
    metrics |= {"best_epoch": int(best_row["epoch"]), "epochs_run": len(rows), **stopped}
    # a probe's from its cached embeddings, fine-tuning's through the inference path
    logits, labels = (
        module.validation_logits(plan.val_records)
        if isinstance(module, ProbeModule)
        else validation_logits(run, plan.val_records)
    )
    metrics["calibration"] = calibrate_on_validation(run, info, logits, labels, config)
    # A probe reads cached embeddings and trains in seconds: a pass of the backbone over the images would undo
    # that, so probes carry no shift score (yet).
    seed = config.train.seed
    reference = (
        None
        if config.train.probe
        else build_reference(run, plan.train_records, plan.val_records, seed)
    )
    if reference is not None:
        metrics["shift_threshold"] = reference.threshold
    metrics["train_seconds"] = round(callbacks.clock.seconds, 1)
    write_json(run.metrics, metrics)
    plot_curves(rows, run.curves)
    if stopped["stopped_early"]:
        console.print(f"Early stopping: {stopped['stop_reason']}")
