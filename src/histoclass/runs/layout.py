"""Every file name of a run directory, an export folder and an evaluation folder: spelled here and
nowhere else.

A run directory holds everything a run produced, with paths relative to itself, so it can be moved or copied.
An existing run is never overwritten: a taken name gets the next free ``NAME-2``, ``NAME-3``, ...
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from histoclass.errors import HistoclassError
from histoclass.machine import launch

__all__ = ["RUN_DIR_ENV", "EvalDir", "ExportDir", "RunDir", "claim_run_dir", "create_run_dir"]

#: Set while a run trains, so processes Lightning spawns for other devices join the same run directory.
RUN_DIR_ENV = "HISTOCLASS_RUN_DIR"


@dataclass(frozen=True)
class ExportDir:
    """An export folder: model files by format, with the labels and preprocessing they share."""

    root: Path

    MODEL_FILES: ClassVar[dict[str, str]] = {
        "onnx": "model.onnx",
        "torchscript": "model.pt",
        "tflite": "model.tflite",
        "openvino": "model.xml",
    }
    INT8_ONNX: ClassVar[str] = "model.int8.onnx"

    @property
    def labels(self) -> Path:
        return self.root / "labels.txt"

    @property
    def preprocess(self) -> Path:
        return self.root / "preprocess.json"

    @property
    def parity(self) -> Path:
        return self.root / "parity.json"

    def model(self, fmt: str) -> Path:
        return self.root / self.MODEL_FILES[fmt]

    @property
    def int8_onnx(self) -> Path:
        return self.root / self.INT8_ONNX


@dataclass(frozen=True)
class EvalDir:
    """What ``evaluate`` writes for one dataset."""

    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def classification_report(self) -> Path:
        return self.root / "classification_report.txt"

    @property
    def confusion_matrix(self) -> Path:
        return self.root / "confusion_matrix.png"

    @property
    def roc(self) -> Path:
        return self.root / "roc.png"

    @property
    def reliability(self) -> Path:
        return self.root / "reliability.png"

    @property
    def most_confused(self) -> Path:
        return self.root / "most_confused.csv"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def report(self) -> Path:
        return self.root / "report.html"


@dataclass(frozen=True)
class SlideDir:
    """What ``slide`` writes for one slide; ``tiles.csv`` grows in ``tiles.partial.csv`` until the
    slide is done."""

    root: Path

    @property
    def tiles(self) -> Path:
        return self.root / "tiles.csv"

    @property
    def partial_tiles(self) -> Path:
        return self.root / "tiles.partial.csv"

    @property
    def geometry(self) -> Path:
        """The tiling a partial ``tiles.csv`` was made with: a resumed run goes on only when it is
        the same."""
        return self.root / "geometry.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def thumbnail(self) -> Path:
        return self.root / "thumbnail.png"

    @property
    def heatmap(self) -> Path:
        return self.root / "heatmap.png"

    def class_heatmap(self, label: str) -> Path:
        return self.root / f"heatmap_{_safe_name(label)}.png"

    @property
    def geojson(self) -> Path:
        return self.root / "tiles.geojson"

    @property
    def report(self) -> Path:
        return self.root / "report.html"


@dataclass(frozen=True)
class SlideIndex:
    """The folder ``slide --out`` writes: one :class:`SlideDir` per slide and an index over them."""

    root: Path

    def slide(self, name: str) -> SlideDir:
        return SlideDir(self.root / _safe_name(name))

    @property
    def index_csv(self) -> Path:
        return self.root / "index.csv"

    @property
    def index_html(self) -> Path:
        return self.root / "index.html"


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory (``runs/NAME``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def labels(self) -> Path:
        return self.root / "labels.txt"

    @property
    def skipped(self) -> Path:
        return self.root / "skipped_files.txt"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def weights(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def model_info(self) -> Path:
        return self.root / "model.json"

    @property
    def shift_reference(self) -> Path:
        """Training images' features and the threshold of the shift score."""
        return self.root / "shift_reference.npz"

    @property
    def adaptation(self) -> Path:
        """How ``adapt`` made this run from its parent, and what it scored."""
        return self.root / "adaptation.json"

    @property
    def calibration_history(self) -> Path:
        return self.root / "calibration_history.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def folds(self) -> Path:
        """``train --folds K``: one complete run directory per fold, ``folds/1`` .. ``folds/K``."""
        return self.root / "folds"

    def fold(self, k: int) -> RunDir:
        return RunDir(self.folds / str(k))

    @property
    def engines(self) -> Path:
        """Converted copies of the weights for faster engines, one folder per weights digest."""
        return self.root / "engines"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def curves(self) -> Path:
        return self.plots / "curves.png"

    @property
    def key_files(self) -> list[Path]:
        """What a tracking server keeps of a finished run (the weights stay in the run directory)."""
        return [
            self.config,
            self.metrics,
            self.history,
            self.model_info,
            self.labels,
            self.split,
            self.plots,
        ]

    @property
    def tensorboard(self) -> str:
        """The logger's sub-folder name (TensorBoard writes below it)."""
        return "tensorboard"

    @property
    def export(self) -> ExportDir:
        return ExportDir(self.root / "export")

    @property
    def export_nhwc(self) -> ExportDir:
        """NHWC exports get a folder of their own: ``preprocess.json`` is shared by the models beside it."""
        return ExportDir(self.root / "export" / "nhwc")

    def evaluation(self, name: str) -> EvalDir:
        return EvalDir(self.root / "eval" / name)

    def is_trained(self) -> bool:
        """True once training finished: the best weights and their description are in place."""
        return self.weights.is_file() and self.model_info.is_file()


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


def create_run_dir(runs_dir: str | Path, name: str) -> RunDir:
    """Claim ``runs_dir/name`` (mkdir is atomic); if taken, the first free ``name-2``, ``name-3``, ..."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = _safe_name(name)
    for attempt in range(1, 10_000):
        candidate = runs_dir / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return RunDir(candidate)
    raise HistoclassError(f"no free run name for '{base}' in {runs_dir}; pass --name")


def claim_run_dir(runs_dir: str | Path, name: str, timeout: float = 600.0) -> tuple[RunDir, bool]:
    """The run directory of this process and whether it writes the run's files (global rank 0 only).

    Processes Lightning spawns find it in :data:`RUN_DIR_ENV`; under torchrun or srun rank 0 claims it and
    the other ranks read its path from a marker file in ``runs_dir`` (a shared filesystem across nodes).
    """
    given = os.environ.get(RUN_DIR_ENV)
    if given:
        return RunDir(Path(given)), False
    rank, world, launch_id = launch()
    if world == 1:
        return create_run_dir(runs_dir, name), True
    marker = Path(runs_dir) / f".launch-{_safe_name(launch_id)}"
    if rank == 0:
        from histoclass.atomic import write_text

        run = create_run_dir(runs_dir, name)
        write_text(marker, str(run.root))
        return run, True
    deadline = time.monotonic() + timeout
    while not marker.is_file():
        if time.monotonic() > deadline:
            raise HistoclassError(
                f"rank {rank}: rank 0 did not create the run directory in {timeout:.0f} s"
            )
        time.sleep(0.5)
    return RunDir(Path(marker.read_text().strip())), False
