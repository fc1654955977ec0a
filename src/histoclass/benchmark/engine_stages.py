"""The CPU engine stages: each engine and precision the predictor can run, on batches already decoded.

Every stage predicts the same decoded images of the benchmark's folder with the model ``ours_train``
wrote; its figure is images/s, and its top-1 answers are compared with PyTorch fp32's on the same
images (the agreement ``--engine auto`` requires is 99.5%). ONNX Runtime and OpenVINO read one
conversion of the model; a runtime that is not installed, or bf16 on a CPU without native bf16, is a
skipped stage with the reason.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from histoclass.benchmark.monitor import UsageMonitor
from histoclass.benchmark.stages import timed
from histoclass.config import BenchConfig
from histoclass.deploy import open_predictor
from histoclass.deploy.engines import convert_run, missing_runtime
from histoclass.inference.engines.torch_engine import native_bf16
from histoclass.inference.predictor import Predictor
from histoclass.models.serialization import load_model
from histoclass.runs import ExportDir

__all__ = ["ENGINE_STAGES", "REFERENCE_STAGE", "EngineBench", "StageSkipped"]

#: Stage name -> (engine, precision, what it is), PyTorch fp32 first: the reference the others are
#: compared with.
ENGINE_STAGES = {
    "engine_torch_fp32": ("torch", "fp32", "PyTorch fp32, channels-last, on decoded batches"),
    "engine_torch_bf16": ("torch", "bf16", "PyTorch bf16 autocast"),
    "engine_onnx": ("onnx", "fp32", "ONNX Runtime"),
    "engine_openvino_f32": ("openvino", "f32", "OpenVINO f32"),
    "engine_openvino_bf16": ("openvino", "bf16", "OpenVINO bf16 (near ties again in f32)"),
}
REFERENCE_STAGE = "engine_torch_fp32"


class StageSkipped(Exception):
    """A stage that cannot run here; the message says why."""


@dataclass
class EngineBench:
    """One trained run's engines on the CPU: its conversion (built once in ``folder``) and PyTorch
    fp32's answers."""

    run: Path
    folder: Path
    pixels: np.ndarray
    reference: np.ndarray | None = field(default=None, init=False)

    @functools.cached_property
    def _model(self) -> tuple:
        """The run's model and info, loaded once for every stage."""
        return load_model(self.run)

    @functools.cached_property
    def _conversion(self) -> ExportDir:
        """One ONNX conversion, read by ONNX Runtime and by OpenVINO alike."""
        return convert_run(*self._model, self.folder / "conversion")

    def _predictor(self, engine: str, precision: str) -> Predictor:
        missing = missing_runtime(engine) if engine != "torch" else None
        if missing:
            raise StageSkipped(missing)
        if precision == "bf16" and not native_bf16(torch.device("cpu")):
            raise StageSkipped("this CPU computes no bf16 natively")
        if engine == "torch":
            return open_predictor(self.run, "torch", device="cpu", precision=precision, shift=False)
        return open_predictor(
            self._conversion.root, engine, precision=precision if engine == "openvino" else None
        )

    def _answers(self, predictor: Predictor, batch: int) -> np.ndarray:
        return np.concatenate(
            [
                predictor.predict_pixels(self.pixels[i : i + batch]).argmax(1)
                for i in range(0, len(self.pixels), batch)
            ]
        )

    def stage(self, name: str, settings: BenchConfig, monitor: UsageMonitor) -> dict:
        """Images/s of stage ``name`` over ``settings.steps`` batches (after ``warmup``), and its top-1
        agreement with PyTorch fp32 on every image."""
        predictor = self._predictor(*ENGINE_STAGES[name][:2])
        batch, images = settings.batch_size, len(self.pixels)
        starts = (
            (k * batch) % max(1, images - batch + 1)
            for k in range(settings.warmup + settings.steps)
        )
        batches = ((self.pixels[s : s + batch], range(s, min(s + batch, images))) for s in starts)
        rate = timed(
            batches,
            settings.warmup,
            settings.steps,
            monitor,
            lambda b: predictor.predict_pixels(b[0]),
        )
        if self.reference is None:
            torch_fp32 = (
                predictor
                if name == REFERENCE_STAGE
                else self._predictor(*ENGINE_STAGES[REFERENCE_STAGE][:2])
            )
            self.reference = self._answers(torch_fp32, batch)
        agreement = float((self._answers(predictor, batch) == self.reference).mean())
        return {"images_per_s": rate, "top1_agreement": round(agreement, 4)}
