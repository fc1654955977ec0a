"""Decoded uint8 images -> model input: the one normalisation, in numpy and torch forms, and the
test-time views.

Resizing happens once, when images are decoded (:func:`histoclass.data.images.load_resized`); here pixels are
scaled to [0, 1] and standardised with the backbone's mean and std. The numpy form serves engines without
torch (ONNX Runtime, OpenVINO, TFLite); the torch form runs on the training or inference device. Both are
tested equal on real images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "DIHEDRAL_VIEWS",
    "dihedral_views",
    "normalize_numpy",
    "normalize_torch",
    "standardize_torch",
]

#: Test-time augmentation: the 8 flips and 90-degree rotations (histology and cells have no up).
DIHEDRAL_VIEWS = 8


def normalize_numpy(
    pixels: np.ndarray, mean: list[float], std: list[float], layout: str = "NCHW"
) -> np.ndarray:
    """uint8 NHWC -> float32 ``layout``, scaled by 1/255 and standardised: one multiply-add written
    straight into the output layout (8x faster than scaling, centring and dividing in turn; a hot
    path of every CPU engine)."""
    std_ = np.asarray(std, np.float32)
    scale, shift = np.float32(1 / 255) / std_, -np.asarray(mean, np.float32) / std_
    n, h, w, c = pixels.shape
    if layout == "NHWC":  # rows of w*c values, so that numpy's inner loop is long (3 is slow)
        source, scale, shift = pixels.reshape(n, h, w * c), np.tile(scale, w), np.tile(shift, w)
    else:
        source, scale, shift = (
            pixels.transpose(0, 3, 1, 2),
            scale.reshape(-1, 1, 1),
            shift.reshape(-1, 1, 1),
        )
    out = np.empty(source.shape, np.float32)  # C order, whatever the order of ``source``
    np.multiply(source, scale, out=out)
    out += shift
    return out.reshape((n, h, w, c) if layout == "NHWC" else (n, c, h, w))


def standardize_torch(unit: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Float NCHW in [0, 1] -> standardised, channels-last (what the models run fastest on)."""
    import torch

    return ((unit - mean) / std).contiguous(memory_format=torch.channels_last)


def normalize_torch(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW on any device -> float scaled by 1/255 -> :func:`standardize_torch`."""
    return standardize_torch(images.float() * (1 / 255), mean, std)


def dihedral_views(pixels: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and 90-degree rotations of an NHWC batch, identity first."""
    views = []
    for k in range(4):
        turned = np.rot90(pixels, k, axes=(1, 2))
        views += [turned, turned[:, :, ::-1]]
    return [np.ascontiguousarray(v) for v in views]
