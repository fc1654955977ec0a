"""What an engine is: something that turns uint8 images into logits, and the registry engines fill.

An engine opens one kind of model file (a run directory's weights, an ONNX, TFLite or TorchScript file) and
imports its runtime only when it is used, so ``histoclass predict model.onnx`` needs no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from histoclass.data.stain_normalize import stain_normalized
from histoclass.errors import HistoclassError
from histoclass.inference.preprocess import dihedral_views, normalize_numpy
from histoclass.registry import Registry
from histoclass.runs import ExportDir, ModelInfo, read_labels

__all__ = ["ENGINES", "Engine", "NumpyEngine", "read_export_info", "register_engine"]


class Engine:
    """Runs one model: :meth:`logits` maps uint8 NHWC images at the model's size to N x classes logits."""

    #: The name ``--engine`` and ``histoclass bench`` use.
    name: ClassVar[str]
    info: ModelInfo
    source: Path

    @classmethod
    def accepts(cls, path: Path) -> bool:
        """True when ``path`` is a model this engine opens directly."""
        raise NotImplementedError

    @classmethod
    def open(cls, path: Path) -> Engine:
        """The engine for the model at ``path``."""
        return cls(path)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def view_outputs(self, pixels: np.ndarray, all_views: bool = False) -> np.ndarray:
        """Raw outputs (N x views x D: logits, or features for a feature model) of uint8 NHWC images
        at the model's size, stain-normalised as the model was trained, over the 8 flips and
        rotations or one view."""
        pixels = stain_normalized(pixels, self.info.stain)
        views = dihedral_views(pixels) if all_views else [pixels]
        return np.stack([self.logits(view) for view in views], axis=1)

    def compile(self) -> None:
        """Compile the model for faster batches: PyTorch models only."""
        raise HistoclassError(
            f"--compile needs a PyTorch model (a run directory), not '{self.source.name}'"
        )

    @property
    def can_explain(self) -> bool:
        """Whether :meth:`saliency` works: it needs gradients, so PyTorch models only."""
        return False

    def saliency(self, pixels: np.ndarray) -> tuple[np.ndarray, int]:
        """A [0, 1] heatmap (H x W) of what drove the predicted class of one uint8 HxWx3 image, and
        that class."""
        raise HistoclassError("heatmaps need a run directory (a PyTorch model), not an export")


class NumpyEngine(Engine):
    """Engines whose runtime takes float32 arrays: normalisation in numpy, in the layout the model
    declares."""

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        inputs = normalize_numpy(pixels, self.info.mean, self.info.std, self.info.layout)
        return np.asarray(self.run(inputs), dtype=np.float32)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError


#: Engine classes by name, in the order ``load`` tries them on a model path.
ENGINES: Registry[type[Engine]] = Registry()


def register_engine(engine: type[Engine]) -> type[Engine]:
    """Class decorator: add ``engine`` to :data:`ENGINES` under its ``name``."""
    return ENGINES.register(engine.name)(engine)


def read_export_info(model_file: Path) -> ModelInfo:
    """The preprocessing and labels written beside an exported model."""
    folder = ExportDir(model_file.parent)
    if not folder.preprocess.is_file():
        raise HistoclassError(
            f"'{model_file}': no {folder.preprocess.name} beside it; export it again with histoclass export"
        )
    info = ModelInfo.load(folder.preprocess)
    if folder.labels.is_file():
        labels = read_labels(folder.labels)
        if len(labels) != info.num_classes:
            raise HistoclassError(
                f"'{folder.labels}' names {len(labels)} classes where the model has {info.num_classes}; "
                "export it again with histoclass export"
            )
        info = info.model_copy(update={"labels": labels})
    return info
