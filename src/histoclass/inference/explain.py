"""Grad-CAM: which regions of an image drove the predicted class (torch models only).

The feature map is the backbone's last spatial one: timm's ``forward_features`` where the backbone
has it, else the output of its last convolution. An ensemble's map is the mean of its members' maps
for its own answer.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

    from histoclass.models.ensemble import Ensemble
    from histoclass.models.factory import Classifier

__all__ = ["grad_cam", "overlay_png"]


def _features_and_logits(
    model: Classifier, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    from torch import nn

    backbone = model.backbone
    if hasattr(backbone, "forward_features") and hasattr(backbone, "forward_head"):
        features = backbone.forward_features(batch)
        return features, model.head(backbone.forward_head(features))
    captured: list[torch.Tensor] = []
    last_conv = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)][-1]
    handle = last_conv.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        logits = model(batch)
    finally:
        handle.remove()
    return captured[-1], logits


def grad_cam(
    model: Classifier | Ensemble, batch: torch.Tensor, target: int | None = None
) -> tuple[np.ndarray, int]:
    """A [0, 1] heatmap at the input's size for ``target`` (default: the predicted class) of a
    1-image batch."""
    import torch
    from torch import nn

    from histoclass.models.ensemble import Ensemble

    model.eval()
    if isinstance(model, Ensemble):
        if target is None:
            with torch.inference_mode():
                target = int(model(batch).argmax(dim=1)[0])
        return _normalised(
            np.mean([grad_cam(member, batch, target)[0] for member in model.members], axis=0)
        ), target
    with torch.enable_grad():
        batch = batch.clone().requires_grad_(True)
        features, logits = _features_and_logits(model, batch)
        target = int(logits.argmax(dim=1)[0]) if target is None else target
        (gradients,) = torch.autograd.grad(logits[0, target], features)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * features).sum(dim=1, keepdim=True)).detach()
    cam = nn.functional.interpolate(
        cam, size=batch.shape[-2:], mode="bilinear", align_corners=False
    )[0, 0]
    return _normalised(cam.cpu().numpy()), target


def _normalised(cam: np.ndarray) -> np.ndarray:
    cam = cam - cam.min()
    peak = float(cam.max())
    return cam / peak if peak > 0 else cam


def overlay_png(pixels: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> bytes:
    """The heatmap (jet colours) blended over the uint8 HxWx3 image, as PNG bytes."""
    from matplotlib import colormaps

    colours = (colormaps["jet"](heatmap)[:, :, :3] * 255).astype(np.float32)
    blended = (1 - alpha) * pixels.astype(np.float32) + alpha * colours
    buffer = io.BytesIO()
    Image.fromarray(blended.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
