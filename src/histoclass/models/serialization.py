"""The saved-model format of a run: ``model.safetensors`` (weights) + ``model.json`` (:class:`ModelInfo`).

Safetensors holds tensors only, so loading a model never unpickles anything.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from histoclass.atomic import atomic_path
from histoclass.errors import HistoclassError
from histoclass.model_info import ModelInfo
from histoclass.models.factory import Classifier, create_model

__all__ = ["MODEL_FILE", "MODEL_INFO_FILE", "count_parameters", "load_model", "save_model"]

MODEL_FILE = "model.safetensors"
MODEL_INFO_FILE = "model.json"


def save_model(model: Classifier, info: ModelInfo, folder: str | Path) -> None:
    """Write weights then description, each atomically, into ``folder``."""
    folder = Path(folder)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with atomic_path(folder / MODEL_FILE) as tmp:
        save_file(state, str(tmp))
    info.save(folder / MODEL_INFO_FILE)


def load_model(folder: str | Path) -> tuple[Classifier, ModelInfo]:
    """Rebuild the classifier saved in ``folder`` (a run directory) in eval mode."""
    folder = Path(folder)
    weights, described = folder / MODEL_FILE, folder / MODEL_INFO_FILE
    for needed in (weights, described):
        if not needed.is_file():
            raise HistoclassError(f"'{folder}' has no {needed.name}; pass a finished run directory (runs/NAME)")
    try:
        info = ModelInfo.load(described)
        state = load_file(str(weights))
    except Exception as error:  # a damaged file shows up as many different exception types
        raise HistoclassError(f"'{folder}': model files are damaged ({type(error).__name__}: {error})") from None
    model = create_model(info.architecture, info.num_classes, info.head, info.dropout, pretrained=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise HistoclassError(f"'{weights}' does not match model.json ({str(error)[:200]})") from None
    return model.eval(), info


def count_parameters(model: torch.nn.Module) -> int:
    """All parameters, trainable or not."""
    return sum(p.numel() for p in model.parameters())
