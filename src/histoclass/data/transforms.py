"""Augmentation built from an :class:`AugmentConfig` (presets: keras, tfdata, histology, none).

Images arrive already resized to the model's size as uint8 CxHxW tensors, so every transform works on few
pixels; normalisation happens on the device, batched, inside the training module.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F
from torchvision.transforms import v2

from histoclass.config import AugmentConfig

__all__ = [
    "RandomHEDJitter",
    "RandomMagnify",
    "RandomRot90",
    "create_batch_mixer",
    "create_train_transform",
]


class RandomRot90(v2.Transform):
    """Rotate by a random multiple of 90 degrees: lossless, and tissue has no up."""

    def make_params(self, flat_inputs: list) -> dict:
        return {"k": int(torch.randint(0, 4, ()).item())}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        return torch.rot90(inpt, params["k"], dims=(-2, -1)) if params["k"] else inpt


class RandomMagnify(v2.Transform):
    """Zoom one float CxHxW image by a log-uniform factor in [low, high] about a centre moved by up to
    ``offset`` of the side, the border filled by reflection (torchvision's affine has only constant fills)."""

    def __init__(self, low: float, high: float, offset: float) -> None:
        super().__init__()
        self.low, self.high, self.offset = low, high, offset

    def make_params(self, flat_inputs: list) -> dict:
        log_factor = torch.empty(()).uniform_(math.log(self.low), math.log(self.high))
        return {
            "factor": float(torch.exp(log_factor)),
            "centre": (torch.rand(2) * 2 - 1) * 2 * self.offset,
        }

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        theta = torch.zeros(1, 2, 3)
        theta[0, 0, 0] = theta[0, 1, 1] = 1 / params["factor"]
        theta[0, :, 2] = params["centre"]
        grid = F.affine_grid(theta, [1, *inpt.shape], align_corners=False)
        return F.grid_sample(inpt[None], grid, "bilinear", "reflection", align_corners=False)[0]


class RandomHEDJitter(v2.Transform):
    """Tellez et al.'s HED jitter for one float CxHxW image in [0, 1]: each stain scaled by 1±s,
    shifted by ±s."""

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = strength

    def make_params(self, flat_inputs: list) -> dict:
        draws = torch.rand(2, 3) * 2 - 1
        return {"scale": 1 + self.strength * draws[0], "shift": self.strength * draws[1]}

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        from histoclass.data.stain import hed_jitter

        return hed_jitter(inpt[None], params["scale"][None], params["shift"][None])[0]


def create_train_transform(
    augment: AugmentConfig, image_size: int, fill: tuple[float, ...] = (0.5, 0.5, 0.5)
) -> v2.Compose:
    """The per-image training transform for ``augment`` at ``image_size`` (float images in [0, 1]): the
    reference the batched device augmentation is tested against."""
    steps: list[v2.Transform] = []
    # first: the batched path composes it on the input side of the geometry
    if augment.magnify is not None:
        steps.append(RandomMagnify(*augment.magnify, augment.magnify_offset))
    if augment.crop_scale is not None and augment.crop_scale < 1:
        steps.append(
            v2.RandomResizedCrop(image_size, scale=(augment.crop_scale, 1.0), antialias=True)
        )
    if augment.rotation or augment.shift or augment.shear or augment.zoom:
        steps.append(
            v2.RandomAffine(
                degrees=augment.rotation,
                translate=(augment.shift, augment.shift) if augment.shift else None,
                scale=(1 - augment.zoom, 1 + augment.zoom) if augment.zoom else None,
                shear=augment.shear or None,
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        )
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.vflip:
        steps.append(v2.RandomVerticalFlip())
    if augment.rot90:
        steps.append(RandomRot90())
    if augment.brightness or augment.contrast or augment.saturation or augment.hue:
        steps.append(
            v2.ColorJitter(
                brightness=augment.brightness or None,
                contrast=augment.contrast or None,
                saturation=augment.saturation or None,
                hue=augment.hue or None,
            )
        )
    if augment.stain:
        steps.append(RandomHEDJitter(augment.stain))
    if augment.grayscale:
        steps.append(v2.RandomGrayscale(augment.grayscale))
    if augment.erasing:
        steps.append(v2.RandomErasing(p=augment.erasing, value=list(fill)))
    return v2.Compose(steps)


class BatchMixer:
    """MixUp and/or CutMix on a fraction of batches; returns soft targets either way."""

    def __init__(self, augment: AugmentConfig, num_classes: int) -> None:
        choices = []
        if augment.mixup > 0:
            choices.append(v2.MixUp(alpha=augment.mixup, num_classes=num_classes))
        if augment.cutmix > 0:
            choices.append(v2.CutMix(alpha=augment.cutmix, num_classes=num_classes))
        self.mix = v2.RandomChoice(choices) if choices else None
        self.probability = augment.mix_prob
        self.num_classes = num_classes

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mix is not None and torch.rand(()) < self.probability:
            return self.mix(images, labels)
        return images, torch.nn.functional.one_hot(labels, self.num_classes).to(images.dtype)


def create_batch_mixer(augment: AugmentConfig, num_classes: int) -> BatchMixer | None:
    """A :class:`BatchMixer` when MixUp or CutMix is on, else None."""
    return BatchMixer(augment, num_classes) if (augment.mixup > 0 or augment.cutmix > 0) else None
