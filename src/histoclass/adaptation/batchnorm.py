"""AdaBN (Li et al. 2016): BatchNorm's running statistics re-estimated on the new source's images.

A network normalises each channel by statistics gathered on its training images; another lab's stain
and camera move those statistics, and every later layer sees inputs it never saw. Re-estimating them
on unlabelled images of the new source, weights unchanged, puts the new images back where the layers
expect them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from histoclass.inference.preprocess import normalize_torch

__all__ = ["batchnorm_layers", "reestimate_batchnorm"]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` (timm's BatchNormAct2d included)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[np.ndarray], mean, std) -> int:
    """Replace the running statistics of ``model``'s BatchNorm layers by their average over ``batches`` (uint8
    NHWC); returns how many images were seen. Weights are untouched; the model is left in eval mode."""
    layers = batchnorm_layers(model)
    momenta = [layer.momentum for layer in layers]
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    seen = 0
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over every batch, not an exponential one
        layer.train()
    for pixels in batches:
        images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
        model(normalize_torch(images, mean_t, std_t))
        seen += len(pixels)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    model.eval()
    return seen
