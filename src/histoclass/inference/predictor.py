"""One predictor interface over every model format: a run directory (torch), ``model.onnx``, ``model.tflite``.

Preprocessing, batching, test-time augmentation and softmax live here once, in numpy; a backend only turns a
float32 batch into logits. Nothing here imports torch, so an ONNX deployment needs numpy, Pillow, onnxruntime.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histoclass.data.images import open_rgb, resize_square, unreadable_reason
from histoclass.data.records import ImageRecords
from histoclass.errors import HistoclassError
from histoclass.model_info import ModelInfo
from histoclass.registry import MatchRegistry

__all__ = ["BACKENDS", "BatchResult", "Predictor", "load", "register_backend", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stable probabilities."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def dihedral_views(batch: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and 90-degree rotations of an NCHW batch (histology is orientation-free)."""
    views = []
    for k in range(4):
        rotated = np.rot90(batch, k, axes=(2, 3))
        views += [rotated, rotated[:, :, :, ::-1]]
    return [np.ascontiguousarray(v) for v in views]


@dataclass
class BatchResult:
    """Probabilities for the readable images of a batch; ``errors`` maps record index -> reason."""

    indices: list[int]
    probabilities: np.ndarray
    errors: dict[int, str]


class Predictor:
    """Base predictor: subclasses set ``info`` and implement ``forward`` (float32 NCHW -> logits)."""

    info: ModelInfo
    source: Path

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    def forward(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def compile(self) -> None:
        """Compile the model for faster batches: PyTorch models only."""
        raise HistoclassError(f"--compile needs a PyTorch model (a run directory), not '{self.source.name}'")

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC at the model's size -> float32 NCHW scaled by 1/255 and standardised."""
        mean = np.asarray(self.info.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.info.std, dtype=np.float32).reshape(1, 3, 1, 1)
        scaled = pixels.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray((scaled - mean) / std)

    def predict_pixels(self, pixels: np.ndarray, tta: bool = False) -> np.ndarray:
        """Probabilities (N x classes) for uint8 NHWC images already at the model's size."""
        batch = self.preprocess(pixels)
        views = dihedral_views(batch) if tta else [batch]
        return np.mean([softmax(self.forward(view)) for view in views], axis=0)

    def predict(
        self, images: Sequence[str | Path | Image.Image | np.ndarray], batch_size: int = 64, tta: bool = False
    ) -> np.ndarray:
        """Probabilities for image files, PIL images or HxWxC arrays; raises on an unreadable image."""
        size = self.info.image_size
        results = []
        for start in range(0, len(images), batch_size):
            chunk = [_as_pixels(item, size) for item in images[start : start + batch_size]]
            results.append(self.predict_pixels(np.stack(chunk), tta=tta))
        return np.concatenate(results) if results else np.zeros((0, len(self.labels)))

    def predict_records(
        self,
        records: ImageRecords,
        batch_size: int = 64,
        tta: bool = False,
        workers: int | None = None,
        cache: np.ndarray | None = None,
    ) -> Iterator[BatchResult]:
        """Predict every record in order, decoding on threads (or reading ``cache``, the decoded pixels);
        unreadable images are reported, not raised."""
        for indices, pixels, errors in iter_pixel_batches(records, self.info.image_size, batch_size, workers, cache):
            probabilities = self.predict_pixels(pixels, tta) if len(indices) else np.zeros((0, len(self.labels)))
            yield BatchResult(indices, probabilities, errors)


def _as_pixels(item: str | Path | Image.Image | np.ndarray, size: int) -> np.ndarray:
    from histoclass.data.images import array_to_rgb

    if isinstance(item, np.ndarray):
        item = Image.fromarray(array_to_rgb(item))
    if isinstance(item, Image.Image):
        return resize_square(item.convert("RGB"), size)
    return resize_square(open_rgb(item, size), size)


def _load_one(records: ImageRecords, i: int, size: int) -> np.ndarray | str:
    try:
        return records.load(i, size)
    except Exception as error:  # every decoder failure is a per-file problem, reported in the output
        return unreadable_reason(error)


def iter_pixel_batches(
    records: ImageRecords, size: int, batch_size: int, workers: int | None = None, cache: np.ndarray | None = None
) -> Iterator[tuple[list[int], np.ndarray, dict[int, str]]]:
    """Decode ``records`` in order on a thread pool; yield (readable indices, uint8 NHWC, errors)."""
    if cache is not None:
        for start in range(0, len(records), batch_size):
            stop = min(start + batch_size, len(records))
            yield list(range(start, stop)), np.asarray(cache[start:stop]), {}
        return
    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(records), batch_size):
            span = range(start, min(start + batch_size, len(records)))
            loaded = list(pool.map(lambda i: _load_one(records, i, size), span))
            good = [i for i, item in zip(span, loaded, strict=True) if not isinstance(item, str)]
            errors = {i: item for i, item in zip(span, loaded, strict=True) if isinstance(item, str)}
            pixels = np.stack([loaded[i - start] for i in good]) if good else np.zeros((0, size, size, 3), np.uint8)
            yield good, pixels, errors


BackendLoader = Callable[[Path], Predictor]
#: Predictor loaders for the model paths their predicate accepts.
BACKENDS: MatchRegistry[Path, BackendLoader] = MatchRegistry()
register_backend = BACKENDS.register


def load(path: str | Path, compile: bool = False) -> Predictor:
    """A predictor for a run directory, an export folder, ``model.onnx`` or ``model.tflite``.

    ``compile``: ``torch.compile`` a PyTorch model (a slower first batch, faster ones after).
    """
    from histoclass.inference import backends  # noqa: F401  (registers the backends)

    path = Path(path)
    if not path.exists():
        raise HistoclassError(f"no such model or run directory '{path}'; pass runs/NAME or a model.onnx file")
    loader = BACKENDS.first(path)
    if loader is not None:
        predictor = loader(path)
        if compile:
            predictor.compile()
        return predictor
    raise HistoclassError(
        f"'{path}' is not a model: pass a run directory (with model.safetensors), model.onnx or model.tflite"
    )
