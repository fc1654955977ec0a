"""The saved-model format of a run: weights in safetensors + :class:`ModelInfo`, at the run's file names.

Safetensors holds tensors only, so loading a model never unpickles anything.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from histoclass.atomic import atomic_path
from histoclass.errors import HistoclassError
from histoclass.models.ensemble import Ensemble
from histoclass.models.factory import Classifier, create_model
from histoclass.runs import ModelInfo, RunDir

__all__ = ["count_parameters", "load_model", "save_model"]


def save_model(model: Classifier | Ensemble, info: ModelInfo, folder: str | Path) -> None:
    """Write weights then description, each atomically, into the run directory ``folder``."""
    run = RunDir(folder)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    with atomic_path(run.weights) as tmp:
        save_file(state, str(tmp))
    info.save(run.model_info)


def load_model(folder: str | Path) -> tuple[Classifier | Ensemble, ModelInfo]:
    """Rebuild the classifier (or ensemble of ``info.members``) saved in the run directory ``folder``, in eval
    mode."""
    run = RunDir(folder)
    for needed in (run.weights, run.model_info):
        if not needed.is_file():
            raise HistoclassError(
                f"'{folder}' has no {needed.name}; pass a finished run directory (runs/NAME)"
            )
    info = ModelInfo.load(run.model_info)  # a damaged description is its own one line
    try:
        state = load_file(str(run.weights))
    except Exception as error:  # a damaged file shows up as many different exception types
        reason = str(error).splitlines()[0][:200] if str(error) else ""
        raise HistoclassError(
            f"'{run.weights}' is damaged ({type(error).__name__}: {reason}); train again"
        ) from None
    members = [
        create_model(info.architecture, info.num_classes, info.head, info.dropout, pretrained=False)
        for _ in range(info.members)
    ]
    model = members[0] if info.members == 1 else Ensemble(members)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise HistoclassError(
            f"'{run.weights}' does not match {run.model_info.name} ({str(error)[:200]})"
        ) from None
    return model.eval(), info


def count_parameters(model: torch.nn.Module) -> int:
    """All parameters, trainable or not."""
    return sum(p.numel() for p in model.parameters())
