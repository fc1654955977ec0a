"""OpenVINO on the CPU: an export folder's ``model.xml`` (IR) or any ``model.onnx``, bf16 where the
CPU has it.

OpenVINO reads ONNX directly, so the IR is an optimisation of loading, not a requirement. The precision hint
follows the CPU: bf16 where it computes bf16 natively (AVX-512 BF16 or AMX), f32 elsewhere; the parity gates
that admit an engine (export, ``--engine auto``) check the result either way. In bf16 the near ties are
computed again in f32: bf16 rounding flips the top class of images whose two best logits are close, and only
there (docs/benchmarks.md: 96-99% top-1 agreement with PyTorch alone, 99.9-100% with the re-check).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from histoclass.errors import HistoclassError
from histoclass.inference.engines.base import NumpyEngine, read_export_info, register_engine
from histoclass.runs import ExportDir, ModelInfo

__all__ = ["OpenVinoEngine", "openvino_core"]

_EXTRA = "pip install 'histoclass[openvino]'"
#: bf16 answers whose two best logits are closer than this are computed again in f32 (7-18% of the images of
#: the Lite0 runs measured; a fixed margin rather than one fitted on the images the parity gate then checks).
BF16_RECHECK_MARGIN = 1.0


def openvino_core():
    """An OpenVINO ``Core``, or one line naming the extra."""
    try:
        import openvino as ov
    except ImportError:
        raise HistoclassError(f"openvino is not installed: {_EXTRA}") from None
    return ov.Core()


def _model_file(path: Path) -> Path:
    if path.is_dir():
        folder = ExportDir(path)
        return (
            folder.model("openvino") if folder.model("openvino").is_file() else folder.model("onnx")
        )
    return path


@register_engine
class OpenVinoEngine(NumpyEngine):
    name = "openvino"

    def __init__(self, path: Path, precision: str | None = None) -> None:
        core = openvino_core()
        self.source = _model_file(path)
        self.info = read_export_info(self.source)
        try:
            self._compile(core, core.read_model(str(self.source)), precision, recheck=True)
        except Exception as error:
            # OpenVINO raises RuntimeError subclasses with long native messages
            raise HistoclassError(
                f"OpenVINO cannot load '{self.source}' ({str(error).splitlines()[0][:160]})"
            ) from None

    @classmethod
    def from_module(cls, module, info: ModelInfo) -> OpenVinoEngine:
        """A PyTorch feature module converted in memory (a few seconds), any batch size; no near-tie re-check,
        which is about logits. Raises what OpenVINO raises when it cannot convert the module."""
        import openvino as ov
        import torch

        engine = cls.__new__(cls)
        engine.source, engine.info = Path(info.name), info
        size = info.image_size
        # the tracer's deprecation and shape notes: nothing a user can act on
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ov.convert_model(
                module.float().eval(), example_input=torch.zeros(1, 3, size, size)
            )
        model.reshape([-1, 3, size, size])
        engine._compile(openvino_core(), model, None, recheck=False)
        return engine

    def _compile(self, core, model, precision: str | None, recheck: bool) -> None:
        native = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.precision = precision or ("bf16" if native else "f32")
        precisions = (
            [self.precision, "f32"] if self.precision == "bf16" and recheck else [self.precision]
        )
        compiled = [
            core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": p}) for p in precisions
        ]
        self.request = compiled[0].create_infer_request()
        self.recheck = compiled[1].create_infer_request() if len(compiled) > 1 else None

    @classmethod
    def accepts(cls, path: Path) -> bool:
        return _model_file(path).suffix == ".xml" and _model_file(path).is_file()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        logits = self.request.infer([inputs])[0].copy()
        if self.recheck is None:
            return logits
        best = np.partition(logits, -2, axis=1)
        near = np.flatnonzero(best[:, -1] - best[:, -2] < BF16_RECHECK_MARGIN)
        if near.size:
            logits[near] = self.recheck.infer([np.ascontiguousarray(inputs[near])])[0]
        return logits
