"""Predictor backends, registered by the model paths they accept. Each imports its runtime only when used."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from histoclass.data.records import ImageRecords
from histoclass.errors import HistoclassError
from histoclass.inference.predictor import BatchResult, Predictor, register_backend, softmax
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
    """A run directory's best weights in PyTorch: GPU with bf16 autocast when present, channels-last.

    Images go to the device as uint8 and are normalised there; files are decoded by loader processes, and the
    next batch is already running on the GPU while the last one's results are read back.
    """

    def __init__(self, run_dir: Path, device: str | None = None) -> None:
        import torch

        from histoclass.models.serialization import load_model

        self.source = Path(run_dir)
        self.model, self.info = load_model(run_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = self.model.to(self.device, memory_format=torch.channels_last).eval()
        self.mean = torch.tensor(self.info.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(self.info.std, device=self.device).view(1, -1, 1, 1)

    def compile(self) -> None:
        self.model.compile()

    def forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        return self._logits(torch.from_numpy(batch).to(self.device), tta=False)[0].float().cpu().numpy()

    def _logits(self, inputs, tta: bool):
        """(views, N, classes) logits for a float NCHW batch already normalised, on the device."""
        import torch

        views = [inputs]
        if tta:
            turns = [torch.rot90(inputs, k, dims=(2, 3)) for k in range(4)]
            views = [v for turned in turns for v in (turned, turned.flip(3))]
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"),
        ):
            return torch.stack([self.model(v.contiguous(memory_format=torch.channels_last)) for v in views])

    def _launch(self, images, tta: bool):
        """Start a uint8 NCHW batch on the device; returns logits on their way back to the host."""
        import torch

        from histoclass.data.device_transforms import normalize_batch

        inputs = normalize_batch(images.to(self.device, non_blocking=True), self.mean, self.std)
        logits = self._logits(inputs, tta).float()
        if self.device.type != "cuda":
            return logits, None
        host = logits.to("cpu", non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, done

    @staticmethod
    def _probabilities(launched) -> np.ndarray:
        logits, done = launched
        if done is not None:
            done.synchronize()
        return np.mean([softmax(view) for view in logits.numpy()], axis=0)

    def predict_pixels(self, pixels: np.ndarray, tta: bool = False) -> np.ndarray:
        import torch

        return self._probabilities(self._launch(torch.from_numpy(pixels).permute(0, 3, 1, 2), tta))

    def predict_records(
        self,
        records: ImageRecords,
        batch_size: int = 64,
        tta: bool = False,
        workers: int | None = None,
        cache: np.ndarray | None = None,
    ) -> Iterator[BatchResult]:
        from histoclass.data.datamodule import ImageDataset, batch_loader

        dataset = ImageDataset(records, self.info.image_size, cache, skip_unreadable=True)
        pending = None
        for images, _, index, errors in batch_loader(dataset, batch_size, workers=workers):
            launched = self._launch(images, tta) if len(index) else None
            if pending is not None:
                yield self._finish(*pending)
            pending = (index.tolist(), launched, errors)
        if pending is not None:
            yield self._finish(*pending)

    def _finish(self, indices: list[int], launched, errors: dict[int, str]) -> BatchResult:
        probabilities = self._probabilities(launched) if launched is not None else np.zeros((0, len(self.labels)))
        return BatchResult(indices, probabilities, errors)


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
