"""Behaviour as Lightning callbacks: the two-phase schedule, phase-aware early stopping, history, speed."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from histoclass.atomic import atomic_path
from histoclass.runs.history import HISTORY_COLUMNS, read_history, write_history

__all__ = [
    "AtomicCheckpointIO",
    "DistributedSummary",
    "EpochSeeder",
    "GracefulStop",
    "HistoryWriter",
    "PhaseAwareEarlyStopping",
    "RelocatableCheckpoint",
    "RunClock",
    "TwoPhaseFinetuning",
    "phase_of",
]


def phase_of(epoch_index: int, phase1_epochs: int) -> int:
    """1 while the backbone is frozen (0-based ``epoch_index`` < ``phase1_epochs``), then 2."""
    return 1 if epoch_index < phase1_epochs else 2


class TwoPhaseFinetuning(Callback):
    """Phase 1 trains the head on a frozen backbone (BatchNorm in inference mode, as in Keras' guide);
    phase 2 also trains the last ``unfreeze_last`` backbone blocks, at the backbone's lower learning rate.

    The phase follows from the epoch alone, so a resumed run lands in the right phase by itself.
    """

    def __init__(self, phase1_epochs: int, unfreeze_last: int | str) -> None:
        self.phase1_epochs = phase1_epochs
        self.unfreeze_last = unfreeze_last

    def _trainable_names(self, blocks: list[list[str]], phase: int) -> set[str]:
        if phase == 1:
            return set()
        chosen = (
            blocks
            if self.unfreeze_last == "all"
            else blocks[len(blocks) - int(self.unfreeze_last) :]
        )
        return {name for block in chosen for name in block} if self.unfreeze_last != 0 else set()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        trainable = self._trainable_names(
            model.blocks, phase_of(trainer.current_epoch, self.phase1_epochs)
        )
        for name, parameter in model.backbone.named_parameters():
            parameter.requires_grad_(name in trainable)
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                frozen = not any(p.requires_grad for p in module.parameters(recurse=False))
                module.train(not frozen)


class PhaseAwareEarlyStopping(EarlyStopping):
    """Early stopping on validation loss that waits for fine-tuning: phase 1 is short and always completes."""

    def __init__(self, phase1_epochs: int, **kwargs) -> None:
        super().__init__(check_on_train_epoch_end=False, **kwargs)
        self.phase1_epochs = phase1_epochs

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 > self.phase1_epochs:
            super().on_validation_end(trainer, pl_module)


class HistoryWriter(Callback):
    """One ``history.csv`` row per epoch (1-based, across both phases), rewritten atomically each epoch.

    On resume, rows of epochs not yet re-run are dropped so the file never repeats or skips an epoch.
    """

    def __init__(self, path: str | Path, phase1_epochs: int) -> None:
        self.path = Path(path)
        self.phase1_epochs = phase1_epochs
        self.rows: list[dict] = []
        self._started = 0.0
        self._validated = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.current_epoch  # restored from the checkpoint by now when resuming
        self.rows = [row for row in read_history(self.path) if int(row["epoch"]) <= done]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        self._validated = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._validated:  # an epoch cut short by a stop request has no validation row
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        # a k-NN probe has none
        groups = trainer.optimizers[0].param_groups if trainer.optimizers else []
        row = {
            "epoch": trainer.current_epoch + 1,
            "phase": phase_of(trainer.current_epoch, self.phase1_epochs),
            "train_loss": metrics.get("train_loss_epoch", float("nan")),
            **{key: metrics.get(key, float("nan")) for key in HISTORY_COLUMNS[3:8]},
            "lr": groups[0]["lr"] if groups else 0.0,
            "seconds": round(time.perf_counter() - self._started, 3),
        }
        self.rows = [r for r in self.rows if int(r["epoch"]) < row["epoch"]] + [row]
        if trainer.is_global_zero:
            write_history(self.path, self.rows)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file first and are renamed into place: a crash never leaves
    half a file."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class EpochSeeder(Callback):
    """Reseeds every epoch from (seed, epoch): dropout and MixUp draw the same numbers whether the run was
    interrupted or not, so a resumed run ends with the same weights as an uninterrupted one (augmentation
    parameters are a hash of seed, epoch and image, see :mod:`histoclass.data.device_transforms`)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(self.seed * 7919 + trainer.current_epoch * 104_729 + trainer.global_rank)


class GracefulStop(Callback):
    """SIGINT/SIGTERM: finish the current batch, save ``last.ckpt``, stop. A second signal stops at once."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            os._exit(128 + signum)
        self.requested = True
        print(
            f"\nhistoclass: signal {signum}: saving a checkpoint after this batch (again to stop now)",
            flush=True,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.requested and not trainer.should_stop:
            trainer.save_checkpoint(self.checkpoint)
            trainer.should_stop = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class DistributedSummary(Callback):
    """Prints the effective batch size, the learning rate and the precision in use once the
    processes are known."""

    def __init__(
        self, batch_size: int, lr: float, unit: str, scaled: bool, precision_note: str = ""
    ) -> None:
        self.batch_size, self.lr, self.unit = batch_size, lr, unit
        self.scaled, self.precision_note = scaled, precision_note

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            world = trainer.world_size
            lr = self.lr * world if self.scaled else self.lr
            how = f"scaled x{world} (--set train.scale_lr=true)" if self.scaled else "not scaled"
            print(
                f"{world} process(es) x {self.batch_size} {self.unit} = effective batch "
                f"{world * self.batch_size}; "
                f"lr {lr:g} ({how}); precision {trainer.precision}{self.precision_note}",
                flush=True,
            )


class RelocatableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose saved state names files, not absolute paths: a moved or copied run
    directory resumes with its own best checkpoint and best score (Lightning drops both when the
    folder's path changed)."""

    _PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")

    def state_dict(self) -> dict:
        state = super().state_dict()
        state |= {key: Path(state[key]).name if state[key] else "" for key in self._PATHS}
        state["best_k_models"] = {
            Path(path).name: score for path, score in state["best_k_models"].items()
        }
        return state | {"dirpath": "."}

    def load_state_dict(self, state_dict: dict) -> None:
        folder = Path(self.dirpath)
        here = {
            key: str(folder / Path(state_dict[key]).name) if state_dict.get(key) else ""
            for key in self._PATHS
        }
        models = {
            str(folder / Path(p).name): v for p, v in state_dict.get("best_k_models", {}).items()
        }
        super().load_state_dict(
            state_dict | here | {"dirpath": self.dirpath, "best_k_models": models}
        )


class RunClock(Callback):
    """Training time over the whole run, interruptions and resumes included (kept in every checkpoint)."""

    def __init__(self) -> None:
        self.before = 0.0
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def state_dict(self) -> dict:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.before = float(state_dict.get("seconds", 0.0))
        self.started = time.perf_counter()
