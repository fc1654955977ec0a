"""The Lightning ``Trainer`` of a run: devices and precision, callbacks, checkpoints and logger."""

from __future__ import annotations

import logging
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar, ThroughputMonitor

from histoclass.config import Config
from histoclass.runs import RunDir
from histoclass.runs.checkpoints import STEP_CHECKPOINT_PREFIX
from histoclass.training.callbacks import (
    AtomicCheckpointIO,
    DistributedSummary,
    EpochSeeder,
    GracefulStop,
    HistoryWriter,
    PhaseAwareEarlyStopping,
    RelocatableCheckpoint,
    RunClock,
    TwoPhaseFinetuning,
)
from histoclass.training.loggers import build_logger

__all__ = ["RunCallbacks", "build_trainer", "device_count", "on_gpu_training", "quiet_lightning"]


def quiet_lightning() -> None:
    """Keep Lightning's banners and tips out of the user's terminal; warnings and errors still show."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # frozen backbones, on purpose
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    # k-NN probes store, not step
    warnings.filterwarnings("ignore", message=".*training_step. returned .None.*")
    warnings.filterwarnings("ignore", message=".*ThroughputMonitor.*flops_per_batch.*")


def device_count(config: Config, on_gpu: bool) -> int:
    """Training processes on this machine (one per device)."""
    devices = config.train.devices
    if devices == "auto":
        return torch.cuda.device_count() if on_gpu else 1
    return len([d for d in devices.split(",") if d.strip()]) if "," in devices else int(devices)


#: Why ``auto`` picks what it picks (docs/benchmarks.md, "Training speed"): on the 2-core AVX-512-BF16 CPU,
#: bf16 autocast made the frozen-backbone phase faster but fine-tuning blocks slower (Lite0 at 96-160 px).
AUTO_PRECISION_REASON = {
    "gpu": "auto: bf16 on GPUs",
    "cpu": (
        "auto: bf16 measured slower than fp32 for fine-tuning on CPU; "
        "--set train.precision=bf16-mixed to try it"
    ),
}


def auto_precision(on_gpu: bool) -> str:
    """``precision: auto``: bf16-mixed on GPUs, fp32 on CPUs (where it measured faster for fine-tuning)."""
    return "bf16-mixed" if on_gpu else "32-true"


def on_gpu_training(config: Config) -> bool:
    """Whether the fit runs on GPUs."""
    accelerator = config.train.accelerator
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _precision_note(config: Config) -> str:
    """Why ``auto`` chose the precision (nothing when the user set one)."""
    return (
        ""
        if config.train.precision
        else f" ({AUTO_PRECISION_REASON['gpu' if on_gpu_training(config) else 'cpu']})"
    )


def _trainer_settings(config: Config) -> dict:
    """Accelerator, devices, precision and strategy: bf16 on GPUs, and DDP that tolerates frozen blocks."""
    cfg = config.train
    on_gpu = on_gpu_training(config)
    precision = cfg.precision or auto_precision(on_gpu)
    several = device_count(config, on_gpu) * cfg.num_nodes > 1
    strategy = cfg.strategy or ("ddp_find_unused_parameters_true" if several else "auto")
    return {
        "accelerator": cfg.accelerator,
        "devices": cfg.devices,
        "precision": precision,
        "strategy": strategy,
    }


def _step_batch(config: Config) -> tuple[int, str]:
    """What one optimizer step sees: a batch of images, or of a probe's embeddings."""
    if config.train.probe:
        return config.train.probe_batch, "embeddings"
    return config.data.batch_size, "images"


class RunCallbacks:
    """The callbacks the train job reads back after fitting: best checkpoint, early stopping, clock, stop."""

    def __init__(self, config: Config, run: RunDir) -> None:
        cfg = config.train
        self.best = RelocatableCheckpoint(
            dirpath=run.checkpoints,
            filename=run.best_checkpoint.stem,
            monitor="val_loss",
            mode="min",
            save_top_k=1,
        )
        # Every epoch, improved or not (``save_last`` only copies a checkpoint that was saved anyway): what
        # --resume continues from.
        self.last = RelocatableCheckpoint(
            dirpath=run.checkpoints,
            filename=run.last_checkpoint.stem,
            monitor=None,
            enable_version_counter=False,
        )
        self.early = PhaseAwareEarlyStopping(
            cfg.phase1_epochs, monitor="val_loss", patience=cfg.early_stopping_patience
        )
        self.clock = RunClock()
        self.stop = GracefulStop(run.last_checkpoint)

    def all(self, config: Config, run: RunDir) -> list[L.Callback]:
        cfg = config.train
        batch, unit = _step_batch(config)
        callbacks = [
            EpochSeeder(cfg.seed),
            TwoPhaseFinetuning(cfg.phase1_epochs, cfg.unfreeze_last),
            self.early,
            self.best,
            self.last,
            self.clock,
            HistoryWriter(run.history, cfg.phase1_epochs),
            self.stop,
            DistributedSummary(batch, cfg.lr, unit, cfg.scale_lr, _precision_note(config)),
            ThroughputMonitor(batch_size_fn=lambda batch: len(batch[1])),
            RichProgressBar(),
        ]
        if cfg.checkpoint_every_steps:
            callbacks.append(
                RelocatableCheckpoint(
                    dirpath=run.checkpoints,
                    filename=STEP_CHECKPOINT_PREFIX + "{epoch}-{step}",
                    every_n_train_steps=cfg.checkpoint_every_steps,
                    save_top_k=1,
                    monitor=None,
                )
            )
        return callbacks


def build_trainer(config: Config, run: RunDir, callbacks: list[L.Callback]) -> L.Trainer:
    """A Trainer writing checkpoints atomically into ``run``, logging where ``--logger`` says."""
    return L.Trainer(
        max_epochs=config.train.epochs,
        num_nodes=config.train.num_nodes,
        sync_batchnorm=config.train.sync_batchnorm,
        callbacks=callbacks,
        logger=build_logger(config, run),
        default_root_dir=run.root,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        enable_model_summary=False,
        **_trainer_settings(config),
    )
