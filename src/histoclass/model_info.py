"""What a trained model expects and answers: architecture, labels and exact preprocessing (``model.json``).

Pure data (no torch), so runtimes that only have onnxruntime read the same description.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from histoclass.data.images import RESIZE_METHOD

__all__ = ["ModelInfo", "read_labels", "write_labels"]


class ModelInfo(BaseModel):
    """Describes a trained classifier; saved as ``model.json`` beside ``model.safetensors``."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    architecture: str
    head: str = "linear"
    dropout: float = 0.0
    labels: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    resize: str = RESIZE_METHOD
    channels: str = "RGB"
    layout: str = "NCHW"
    input_range: str = "uint8 / 255, then (x - mean) / std"
    name: str = ""
    parameters: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def save(self, path: str | Path) -> None:
        from histoclass.atomic import write_text

        write_text(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelInfo:
        return cls.model_validate(json.loads(Path(path).read_text()))


def write_labels(path: str | Path, labels: list[str]) -> None:
    """``labels.txt``: one class name a line, in output-index order."""
    from histoclass.atomic import write_text

    write_text(path, "".join(f"{label}\n" for label in labels))


def read_labels(path: str | Path) -> list[str]:
    """Class names from a ``labels.txt``."""
    return [line.rstrip("\n") for line in Path(path).read_text().splitlines() if line.strip()]
