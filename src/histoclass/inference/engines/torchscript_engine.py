"""An exported TorchScript ``model.pt`` (our own export: TorchScript archives are code, load only
trusted ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoclass.inference.engines.base import NumpyEngine, read_export_info, register_engine

__all__ = ["TorchScriptEngine"]


@register_engine
class TorchScriptEngine(NumpyEngine):
    name = "torchscript"

    def __init__(self, path: Path) -> None:
        import torch

        self.source = path
        self.info = read_export_info(path)
        self.module = torch.jit.load(str(path), map_location="cpu").eval()

    @classmethod
    def accepts(cls, path: Path) -> bool:
        return path.suffix == ".pt" and path.is_file()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(inputs)).float().numpy()
