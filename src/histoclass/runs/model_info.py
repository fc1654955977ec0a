"""What a trained model expects and answers: architecture, labels and exact preprocessing (``model.json``).

Pure data (no torch), so runtimes that only have onnxruntime read the same description; an export's
``preprocess.json`` is the same record.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from histoclass.atomic import write_text
from histoclass.data.framing import Framing
from histoclass.data.stain_normalize import StainNormalization
from histoclass.errors import HistoclassError

__all__ = ["Calibration", "ModelInfo", "read_labels", "write_labels"]


class Calibration(BaseModel):
    """How raw outputs become calibrated probabilities, prediction sets and (two classes) a decision."""

    model_config = ConfigDict(extra="ignore")

    temperature: float = 1.0
    coverage: float | None = None
    mondrian: bool = False
    thresholds: list[float] = []
    decision_threshold: float | None = None
    tta: bool = False
    images: int = 0
    fitted_on: str = ""

    @property
    def has_sets(self) -> bool:
        return self.coverage is not None and bool(self.thresholds)


class ModelInfo(BaseModel):
    """Describes a trained classifier; saved as ``model.json`` beside its weights."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    architecture: str
    head: str = "linear"
    dropout: float = 0.0
    labels: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    resize: str
    #: What of each image is resized (:mod:`histoclass.data.framing`): all of it, or a square around its cell.
    framing: Framing = "field"
    channels: str = "RGB"
    layout: str = "NCHW"
    input_range: str = "uint8 / 255, then (x - mean) / std"
    #: Applied to the uint8 images before everything above (None: images as stored).
    stain: StainNormalization | None = None
    name: str = ""
    parameters: int = 0
    #: Microns per pixel of the training images as stored, and their typical side in pixels: a slide is
    #: tiled so that a tile covers what a training image covered (None: the user did not say).
    mpp: float | None = None
    tile_pixels: int | None = None
    #: Classifiers averaged into this model (``train --folds K``): their mean probability is its answer.
    members: int = 1
    #: The run this one was adapted from (``histoclass adapt``), as its path was given then.
    parent: str | None = None
    calibration: Calibration = Calibration()

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def save(self, path: str | Path) -> None:
        write_text(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelInfo:
        """The description at ``path``; a damaged one is one line naming the file and what is wrong."""
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the file"
            raise HistoclassError(
                f"'{path}' is damaged ({where}: {first['msg']}); export or train again"
            ) from None
        except (OSError, ValueError) as error:  # unreadable, or not JSON
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise HistoclassError(
                f"'{path}' is damaged ({reason}); export or train again"
            ) from None


def write_labels(path: str | Path, labels: list[str]) -> None:
    """``labels.txt``: one class name a line, in output-index order."""
    write_text(path, "".join(f"{label}\n" for label in labels))


def read_labels(path: str | Path) -> list[str]:
    """Class names from a ``labels.txt``."""
    return [line.rstrip("\n") for line in Path(path).read_text().splitlines() if line.strip()]
