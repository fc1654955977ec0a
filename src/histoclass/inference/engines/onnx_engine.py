"""An exported ``model.onnx`` run by ONNX Runtime (CUDA provider when available)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoclass.errors import HistoclassError
from histoclass.inference.engines.base import NumpyEngine, read_export_info, register_engine

__all__ = ["OnnxEngine", "onnx_file"]


def onnx_file(path: Path) -> Path:
    """An export folder's float ONNX model, or ``path`` itself."""
    from histoclass.runs import ExportDir

    return ExportDir(path).model("onnx") if path.is_dir() else path


@register_engine
class OnnxEngine(NumpyEngine):
    name = "onnx"

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise HistoclassError(
                "ONNX models need onnxruntime: pip install 'histoclass[runtime]'"
            ) from None
        self.source = onnx_file(path)
        self.info = read_export_info(self.source)
        available = ort.get_available_providers()
        chosen = providers or [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
        ]
        try:
            self.session = ort.InferenceSession(str(self.source), providers=chosen)
        except Exception as error:  # onnxruntime raises its own exception types for damaged files
            raise HistoclassError(
                f"'{self.source}' is not a loadable ONNX model ({str(error)[:160]})"
            ) from None
        self.input_name = self.session.get_inputs()[0].name

    @classmethod
    def accepts(cls, path: Path) -> bool:
        model = onnx_file(path)
        return model.suffix == ".onnx" and model.is_file()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: inputs})[0]
