"""The CPU engine stages: each engine and precision the predictor can run, on batches already decoded.

Every stage predicts the same decoded images of the benchmark's folder with the model ``ours_train`` wrote; its
figure is images/s, and its top-1 answers are compared with PyTorch fp32's on the same images (the agreement
``--engine auto`` requires is 99.5%). ONNX Runtime and OpenVINO read one conversion of the model; a runtime that
is not installed, or bf16 on a CPU without native bf16, is a skipped stage with the reason.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from histoclass.benchmark.monitor import UsageMonitor
from histoclass.benchmark.stages import timed
from histoclass.config import BenchConfig
from histoclass.export.engines import convert_run
from histoclass.inference.engines.onnx_engine import OnnxEngine
from histoclass.inference.engines.openvino_engine import OpenVinoEngine
from histoclass.inference.engines.torch_engine import TorchEngine, native_bf16
from histoclass.inference.predictor import Predictor
from histoclass.models.serialization import load_model
from histoclass.runs import ExportDir

__all__ = ["ENGINE_STAGES", "REFERENCE_STAGE", "EngineBench", "StageSkipped"]

#: Stage name -> (engine, precision), PyTorch fp32 first: the reference the others are compared with.
ENGINE_STAGES = {
    "engine_torch_fp32": ("torch", "fp32"),
    "engine_torch_bf16": ("torch", "bf16"),
    "engine_onnx": ("onnx", "fp32"),
    "engine_openvino_f32": ("openvino", "f32"),
    "engine_openvino_bf16": ("openvino", "bf16"),
}
REFERENCE_STAGE = "engine_torch_fp32"
_RUNTIMES = {"onnx": ("onnxruntime", "runtime"), "openvino": ("openvino", "openvino")}


class StageSkipped(Exception):
    """A stage that cannot run here; the message says why."""


@dataclass
class EngineBench:
    """One trained run's engines on the CPU: its conversion (built once in ``folder``) and PyTorch fp32's answers."""

    run: Path
    folder: Path
    pixels: np.ndarray
    reference: np.ndarray | None = field(default=None, init=False)

    def _predictor(self, engine: str, precision: str) -> Predictor:
        if engine in _RUNTIMES and importlib.util.find_spec(_RUNTIMES[engine][0]) is None:
            raise StageSkipped(
                f"{_RUNTIMES[engine][0]} is not installed: pip install 'histoclass[{_RUNTIMES[engine][1]}]'"
            )
        if precision == "bf16" and not native_bf16(torch.device("cpu")):
            raise StageSkipped("this CPU computes no bf16 natively")
        model, info = load_model(self.run)
        if engine == "torch":
            return Predictor(TorchEngine(model, info, self.run, "cpu", bf16=precision == "bf16"))
        export = ExportDir(self.folder / "conversion")
        if not export.model("openvino").is_file():
            convert_run(model, info, export.root, openvino=engine == "openvino")
        if engine == "onnx":
            return Predictor(OnnxEngine(export.root, providers=["CPUExecutionProvider"]))
        return Predictor(OpenVinoEngine(export.root, precision=precision))

    def _answers(self, predictor: Predictor, batch: int) -> np.ndarray:
        return np.concatenate(
            [predictor.predict_pixels(self.pixels[i : i + batch]).argmax(1) for i in range(0, len(self.pixels), batch)]
        )

    def stage(self, name: str, settings: BenchConfig, monitor: UsageMonitor) -> dict:
        """Images/s of stage ``name`` over ``settings.steps`` batches (after ``warmup``), and its top-1
        agreement with PyTorch fp32 on every image."""
        predictor = self._predictor(*ENGINE_STAGES[name])
        batch, images = settings.batch_size, len(self.pixels)
        starts = ((k * batch) % max(1, images - batch + 1) for k in range(settings.warmup + settings.steps))
        batches = ((self.pixels[s : s + batch], range(s, min(s + batch, images))) for s in starts)
        rate = timed(batches, settings.warmup, settings.steps, monitor, lambda b: predictor.predict_pixels(b[0]))
        if self.reference is None:
            torch_fp32 = predictor if name == REFERENCE_STAGE else self._predictor(*ENGINE_STAGES[REFERENCE_STAGE])
            self.reference = self._answers(torch_fp32, batch)
        agreement = float((self._answers(predictor, batch) == self.reference).mean())
        return {"images_per_s": rate, "top1_agreement": round(agreement, 4)}
