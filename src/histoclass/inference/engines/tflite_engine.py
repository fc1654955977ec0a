"""An exported ``model.tflite`` run by LiteRT's interpreter (``pip install 'histoclass[tflite]'``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoclass.errors import HistoclassError
from histoclass.inference.engines.base import NumpyEngine, read_export_info, register_engine

__all__ = ["TFLiteEngine"]


@register_engine
class TFLiteEngine(NumpyEngine):
    name = "tflite"

    def __init__(self, path: Path) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise HistoclassError(
                "TFLite models need LiteRT: pip install 'histoclass[tflite]'"
            ) from None
        self.source = path
        self.info = read_export_info(path)
        self.interpreter = Interpreter(model_path=str(path))
        self._batch = 0

    @classmethod
    def accepts(cls, path: Path) -> bool:
        return path.suffix == ".tflite" and path.is_file()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        interpreter = self.interpreter
        detail = interpreter.get_input_details()[0]
        if self._batch != len(inputs):
            interpreter.resize_tensor_input(detail["index"], list(inputs.shape))
            interpreter.allocate_tensors()
            self._batch = len(inputs)
        interpreter.set_tensor(detail["index"], inputs)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
