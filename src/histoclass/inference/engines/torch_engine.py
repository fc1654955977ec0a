"""A run directory's best weights in PyTorch: channels-last, bf16 autocast on a GPU, Grad-CAM heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoclass.inference.engines.base import Engine, register_engine
from histoclass.runs import RunDir

__all__ = ["TorchEngine"]


@register_engine
class TorchEngine(Engine):
    """Images go to the device as uint8 and are normalised there."""

    name = "torch"

    def __init__(self, run_dir: Path, device: str | None = None) -> None:
        import torch

        from histoclass.models.serialization import load_model

        self.source = Path(run_dir)
        self.model, self.info = load_model(run_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = self.model.to(self.device, memory_format=torch.channels_last).eval()
        self.mean = torch.tensor(self.info.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(self.info.std, device=self.device).view(1, -1, 1, 1)

    @classmethod
    def accepts(cls, path: Path) -> bool:
        return path.is_dir() and RunDir(path).weights.is_file()

    def compile(self) -> None:
        self.model.compile()

    def inputs(self, pixels: np.ndarray):
        """uint8 NHWC numpy -> the normalised float NCHW batch on the device."""
        import torch

        from histoclass.inference.preprocess import normalize_torch

        images = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
        return normalize_torch(images.permute(0, 3, 1, 2), self.mean, self.std)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"),
        ):
            return self.model(self.inputs(pixels)).float().cpu().numpy()

    @property
    def can_explain(self) -> bool:
        return True

    def saliency(self, pixels: np.ndarray) -> tuple[np.ndarray, int]:
        from histoclass.inference.explain import grad_cam

        return grad_cam(self.model, self.inputs(pixels[None]))
