"""Stain colour in optical density: colour deconvolution into haematoxylin, eosin and DAB (Ruifrok & Johnston
2001, the matrices of ``skimage.color``), and the HED jitter of Tellez et al. 2019 built on it.

Unlike ``skimage.color.rgb2hed`` the stains are not clipped at zero, so going to HED and back returns the
image unchanged and only the jitter changes colours. Torch, batched, on any device.
"""

from __future__ import annotations

import torch

__all__ = ["HED_FROM_RGB", "RGB_FROM_HED", "hed_jitter", "hed_to_rgb", "rgb_to_hed"]

RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
#: skimage's floor before the logarithm, and the scale that comes with it.
_FLOOR = 1e-6
_LOG_FLOOR = float(torch.log(torch.tensor(_FLOOR, dtype=torch.float64)))


def rgb_to_hed(images: torch.Tensor) -> torch.Tensor:
    """RGB NCHW in [0, 1] -> haematoxylin, eosin, DAB concentrations NCHW (skimage's scale, unclipped)."""
    matrix = HED_FROM_RGB.to(images.device, images.dtype)
    density = torch.log(images.clamp(min=_FLOOR)) / _LOG_FLOOR
    return torch.einsum("nchw,cd->ndhw", density, matrix)


def hed_to_rgb(stains: torch.Tensor) -> torch.Tensor:
    """Concentrations NCHW -> RGB NCHW in [0, 1] (the inverse of :func:`rgb_to_hed`)."""
    matrix = RGB_FROM_HED.to(stains.device, stains.dtype)
    return torch.exp(torch.einsum("ndhw,dc->nchw", stains * _LOG_FLOOR, matrix)).clamp(0, 1)


def hed_jitter(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Each stain channel ``s`` of each image becomes ``s * scale + shift`` (both N x 3)."""
    stains = rgb_to_hed(images)
    return hed_to_rgb(stains * scale[:, :, None, None] + shift[:, :, None, None])
