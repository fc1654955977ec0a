"""One predictor over every model format and engine: images -> probabilities, with test-time views.

Batching, test-time augmentation and softmax live here once; an engine (see
:mod:`histoclass.inference.engines`) only turns uint8 images into logits. Nothing here imports
torch, so an ONNX deployment needs numpy, Pillow, SciPy and onnxruntime.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from histoclass.calibration.conformal import prediction_sets
from histoclass.calibration.temperature import calibrated_probabilities
from histoclass.data.batches import PixelBatch, iter_batches, load_pixels
from histoclass.data.framing import Framing
from histoclass.data.images import array_to_rgb, load_resized, resize_square
from histoclass.data.records import ImageRecords
from histoclass.data.stain_normalize import stain_normalized
from histoclass.errors import HistoclassError
from histoclass.inference.engines import ENGINES, Engine
from histoclass.runs import ModelInfo, RunDir

__all__ = ["BatchResult", "Predictor", "ShiftScores", "load"]


@dataclass
class BatchResult:
    """Probabilities (and the raw logits of each test-time view, N x V x C) for the readable images
    of a batch; ``errors`` maps record index -> reason; ``shift``: each image's shift score, when
    the model has a reference."""

    indices: list[int]
    probabilities: np.ndarray
    errors: dict[int, str]
    view_logits: np.ndarray
    shift: np.ndarray | None = None


class ShiftScores(Protocol):
    """What scores images against a model's training data (:class:`histoclass.shift.scorer.ShiftScorer`)."""

    reference: Any

    def score(self, pixels: np.ndarray) -> np.ndarray: ...


class Predictor:
    """A model behind an engine, answering with probabilities in :attr:`labels` order; with a
    ``shift`` scorer, also with each image's distance from the training data."""

    def __init__(
        self, engine: Engine, origin: Path | None = None, shift: ShiftScores | None = None
    ) -> None:
        self.engine = engine
        self._origin = origin
        self.shift = shift

    @property
    def origin(self) -> Path:
        """The model the user named (a run directory, an export); :attr:`source` is the file the engine runs,
        which for a run on a converted engine lies in the run's engine cache."""
        return self._origin or self.engine.source

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    @property
    def source(self) -> Path:
        return self.engine.source

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    @property
    def can_explain(self) -> bool:
        return self.engine.can_explain

    def compile(self) -> None:
        self.engine.compile()

    def view_logits(self, pixels: np.ndarray, tta: bool = False) -> np.ndarray:
        """Raw logits, N x views x classes, of uint8 NHWC images already at the model's size."""
        return self.engine.view_outputs(pixels, tta)

    def probabilities(self, view_logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N x classes): the run's temperature, averaged over the views."""
        return calibrated_probabilities(view_logits, self.info.calibration.temperature)

    def predict_pixels(self, pixels: np.ndarray, tta: bool = False) -> np.ndarray:
        """Probabilities (N x classes) for uint8 NHWC images already at the model's size."""
        return self.probabilities(self.view_logits(pixels, tta))

    def prediction_sets(self, probabilities: np.ndarray) -> np.ndarray | None:
        """N x classes booleans: each image's conformal prediction set (None when the model has none)."""
        calibration = self.info.calibration
        return (
            prediction_sets(probabilities, calibration.thresholds) if calibration.has_sets else None
        )

    def shift_scores(self, pixels: np.ndarray) -> np.ndarray | None:
        """Shift scores of uint8 NHWC images at the model's size (None without a scorer)."""
        return None if self.shift is None else self.shift.score(pixels)

    def _whole_image_shift(self, records: ImageRecords, batch: PixelBatch) -> np.ndarray | None:
        """Shift scores of the batch's whole images, whatever the model's framing: the square around a cell
        hides what makes an image another kind (:func:`histoclass.shift.scorer.build_reference`)."""
        if self.shift is None or self.info.framing == "field":
            return self.shift_scores(batch.pixels)
        whole = load_pixels(records.framed("field"), batch.indices, self.info.image_size)
        return self.shift_scores(whole.pixels)

    def predict(
        self,
        images: Sequence[str | Path | Image.Image | np.ndarray],
        batch_size: int = 64,
        tta: bool = False,
    ) -> np.ndarray:
        """Probabilities for image files, PIL images or HxWxC arrays; raises on an unreadable image."""
        size = self.info.image_size
        results = []
        for start in range(0, len(images), batch_size):
            chunk = [
                _as_pixels(item, size, self.info.framing)
                for item in images[start : start + batch_size]
            ]
            results.append(self.predict_pixels(np.stack(chunk), tta=tta))
        return np.concatenate(results) if results else np.zeros((0, len(self.labels)))

    def predict_records(
        self,
        records: ImageRecords,
        batch_size: int = 64,
        tta: bool = False,
        threads: int | None = None,
        cache: np.ndarray | None = None,
    ) -> Iterator[BatchResult]:
        """Predict every record in order, decoding a few batches ahead on threads (or reading ``cache``, the
        decoded pixels); unreadable images are reported, not raised."""
        size, classes = self.info.image_size, len(self.labels)
        records = records.framed(self.info.framing)
        for batch in iter_batches(records, size, batch_size, threads, cache):
            if batch.indices:
                logits = self.view_logits(batch.pixels, tta)
                shift = self._whole_image_shift(records, batch)
                yield BatchResult(
                    batch.indices, self.probabilities(logits), batch.errors, logits, shift
                )
            else:
                yield BatchResult(
                    [], np.zeros((0, classes)), batch.errors, np.zeros((0, 1, classes), np.float32)
                )

    def explain(self, pixels: np.ndarray) -> tuple[bytes, str]:
        """A PNG of one uint8 HxWx3 image at the model's size with its Grad-CAM heatmap, and the
        predicted label."""
        from histoclass.inference.explain import overlay_png

        heatmap, target = self.engine.saliency(stain_normalized(pixels[None], self.info.stain)[0])
        return overlay_png(pixels, heatmap), self.labels[target]


def _as_pixels(
    item: str | Path | Image.Image | np.ndarray, size: int, framing: Framing
) -> np.ndarray:
    if isinstance(item, np.ndarray):
        item = Image.fromarray(array_to_rgb(item))
    if isinstance(item, Image.Image):
        return resize_square(item.convert("RGB"), size, framing)
    return load_resized(item, size, framing)


def load(path: str | Path, compile: bool = False) -> Predictor:
    """A predictor for a run directory, an export folder, ``model.onnx``, ``model.tflite`` or ``model.pt``.

    ``compile``: ``torch.compile`` a PyTorch model (a slower first batch, faster ones after).
    """
    path = Path(path)
    if not path.exists():
        raise HistoclassError(
            f"no such model or run directory '{path}'; pass runs/NAME or a model.onnx file"
        )
    engine_class = next((ENGINES[name] for name in ENGINES if ENGINES[name].accepts(path)), None)
    if engine_class is None and RunDir(path).config.is_file():
        raise HistoclassError(
            f"'{path}' is an unfinished run (no {RunDir(path).weights.name}): finish it with "
            f"histoclass train --resume {path}"
        )
    if engine_class is None:
        raise HistoclassError(
            f"'{path}' is not a model: pass a run directory (with its weights), model.onnx, "
            "model.tflite or model.pt"
        )
    predictor = Predictor(engine_class.open(path))
    if compile:
        predictor.compile()
    return predictor
