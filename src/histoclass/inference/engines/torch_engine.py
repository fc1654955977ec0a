"""PyTorch: a run directory's best weights (or any feature module), channels-last, bf16 autocast on a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histoclass.inference.engines.base import Engine, register_engine
from histoclass.runs import ModelInfo, RunDir

__all__ = ["TorchEngine", "native_bf16"]


def native_bf16(device) -> bool:
    """Whether ``device`` computes bf16 natively (a recent GPU, or a CPU with AVX-512 BF16 or AMX)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@register_engine
class TorchEngine(Engine):
    """Images go to the device as uint8 and are normalised there; Grad-CAM heatmaps for classifiers.

    ``bf16``: autocast to bfloat16 (None: on GPUs only, where it is the training precision too).
    """

    name = "torch"

    def __init__(
        self,
        model,
        info: ModelInfo,
        source: Path,
        device: str | None = None,
        bf16: bool | None = None,
    ):
        import torch

        self.info, self.source = info, Path(source)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.bf16 = self.device.type == "cuda" if bf16 is None else bf16
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std, device=self.device).view(1, -1, 1, 1)

    @classmethod
    def accepts(cls, path: Path) -> bool:
        return path.is_dir() and RunDir(path).weights.is_file()

    @classmethod
    def open(cls, path: Path, device: str | None = None, bf16: bool | None = None) -> TorchEngine:
        from histoclass.models.serialization import load_model

        model, info = load_model(path)
        return cls(model, info, path, device, bf16)

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
            torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16),
        ):
            return self.model(self.inputs(pixels)).float().cpu().numpy()

    @property
    def can_explain(self) -> bool:
        return True

    def saliency(self, pixels: np.ndarray) -> tuple[np.ndarray, int]:
        from histoclass.inference.explain import grad_cam

        return grad_cam(self.model, self.inputs(pixels[None]))
