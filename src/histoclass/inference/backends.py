"""Predictor backends, registered by the model paths they accept. Each imports its runtime only when used."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoclass.errors import HistoclassError
from histoclass.inference.predictor import Predictor, register_backend
from histoclass.model_info import ModelInfo, read_labels

__all__ = ["OnnxPredictor", "TFLitePredictor", "TorchPredictor", "TorchScriptPredictor", "read_export_info"]


def read_export_info(model_file: Path) -> ModelInfo:
    """The preprocessing and labels written beside an exported model (``preprocess.json``, ``labels.txt``)."""
    preprocess, labels = model_file.parent / "preprocess.json", model_file.parent / "labels.txt"
    if not preprocess.is_file():
        raise HistoclassError(f"'{model_file}': no preprocess.json beside it; export it again with histoclass export")
    info = ModelInfo.load(preprocess)
    if labels.is_file():
        info = info.model_copy(update={"labels": read_labels(labels)})
    return info


def _to_layout(batch: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(batch.transpose(0, 2, 3, 1)) if layout == "NHWC" else batch


@register_backend(lambda path: path.is_dir() and (path / "model.safetensors").is_file())
class TorchPredictor(Predictor):
    """A run directory's best weights in PyTorch: GPU with bf16 autocast when present, channels-last."""

    def __init__(self, run_dir: Path, device: str | None = None) -> None:
        import torch

        from histoclass.models.serialization import load_model

        self.source = Path(run_dir)
        self.model, self.info = load_model(run_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = self.model.to(self.device, memory_format=torch.channels_last)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"),
        ):
            logits = self.model(inputs.contiguous(memory_format=torch.channels_last))
        return logits.float().cpu().numpy()


def _onnx_file(path: Path) -> Path:
    return path / "model.onnx" if path.is_dir() else path


@register_backend(lambda path: _onnx_file(path).suffix == ".onnx" and _onnx_file(path).is_file())
class OnnxPredictor(Predictor):
    """An exported ``model.onnx`` run by onnxruntime (CUDA provider when available)."""

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise HistoclassError("ONNX models need onnxruntime: pip install 'histoclass[runtime]'") from None
        self.source = _onnx_file(path)
        self.info = read_export_info(self.source)
        available = ort.get_available_providers()
        chosen = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(self.source), providers=chosen)
        except Exception as error:  # onnxruntime raises its own exception types for damaged files
            raise HistoclassError(f"'{self.source}' is not a loadable ONNX model ({str(error)[:160]})") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: _to_layout(batch, self.info.layout)})[0]


@register_backend(lambda path: path.suffix == ".tflite" and path.is_file())
class TFLitePredictor(Predictor):
    """An exported ``model.tflite`` run by LiteRT's interpreter (``pip install 'histoclass[tflite]'``)."""

    def __init__(self, path: Path) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise HistoclassError("TFLite models need LiteRT: pip install 'histoclass[tflite]'") from None
        self.source = path
        self.info = read_export_info(path)
        self.interpreter = Interpreter(model_path=str(path))
        self._batch = 0

    def forward(self, batch: np.ndarray) -> np.ndarray:
        batch = _to_layout(batch, self.info.layout)
        interpreter = self.interpreter
        detail = interpreter.get_input_details()[0]
        if self._batch != len(batch):
            interpreter.resize_tensor_input(detail["index"], list(batch.shape))
            interpreter.allocate_tensors()
            self._batch = len(batch)
        interpreter.set_tensor(detail["index"], batch.astype(np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@register_backend(lambda path: path.suffix == ".pt" and path.is_file())
class TorchScriptPredictor(Predictor):
    """An exported TorchScript ``model.pt`` (our own export: TorchScript archives are code, load only trusted ones)."""

    def __init__(self, path: Path) -> None:
        import torch

        self.source = path
        self.info = read_export_info(path)
        self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(_to_layout(batch, self.info.layout))).float().numpy()
