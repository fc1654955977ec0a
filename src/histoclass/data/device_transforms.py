"""Whole-batch transforms on the training device: normalisation and augmentation with per-image parameters.

The CPU only decodes and resizes; flips, rotations, affine warps, crops and colour jitter run here on the
batch, so a GPU does in a millisecond what costs a CPU core about 2 ms per image. The families and ranges are
those of :func:`histoclass.data.transforms.create_train_transform` (torchvision, per image), which stays the
reference that ``tests/test_augment.py`` compares against.

Random parameters are a hash of (seed, epoch, image index), not draws from a generator: an image gets the same
augmentation in the same epoch whatever the batch, the device count or an interruption, so a resumed run
repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from histoclass.config import AugmentConfig
from histoclass.data.stain import hed_jitter

__all__ = ["BatchAugment", "hashed_uniforms"]

_MASK = 0xFFFFFFFF
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's luma weights
_CROP_TRIES = 10  # as torchvision's RandomResizedCrop and RandomErasing
#: Where each transform's uniforms sit in an image's draw (new transforms append, so old draws never change).
_HED = slice(16 + 2 * _CROP_TRIES, 22 + 2 * _CROP_TRIES)
_ERASE = slice(_HED.stop, _HED.stop + 3 + 2 * _CROP_TRIES)
_MAGNIFY = slice(_ERASE.stop, _ERASE.stop + 3)  # log-magnification, then the centre's offset
_GREY = _MAGNIFY.stop
_DRAWS = _GREY + 1
#: torchvision's RandomErasing defaults.
_ERASE_SCALE, _ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)


def _mul32(x, constant: int):
    """``x * constant mod 2**32`` in 16-bit halves, so no product reaches 2**63 (ints or int64 tensors)."""
    return ((x & 0xFFFF) * constant + ((((x >> 16) * constant) & 0xFFFF) << 16)) & _MASK


def _mix32(x):
    """MurmurHash3's 32-bit finaliser: every input bit flips about half the output bits."""
    x = _mul32(x ^ (x >> 16), 0x85EBCA6B)
    x = _mul32(x ^ (x >> 13), 0xC2B2AE35)
    return x ^ (x >> 16)


def hashed_uniforms(seed: int, epoch: int, index: torch.Tensor, count: int) -> torch.Tensor:
    """(N, count) floats in [0, 1): a pure function of (seed, epoch, index), computed on ``index``'s
    device."""
    base = _mix32(_mix32(seed & _MASK) ^ _mix32((epoch + 0x632BE5AB) & _MASK))
    keys = _mix32((index.long() & _MASK) ^ base)
    streams = _mix32((torch.arange(1, count + 1, device=index.device) * 0x9E3779B9) & _MASK)
    return (_mix32(keys[:, None] ^ streams) >> 8).float() / float(1 << 24)


def _between(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def _gray(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * images + (1 - factor) * other).clamp_(0, 1)


def _brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * factor).clamp_(0, 1)


def _contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, _gray(images).mean(dim=(1, 2, 3), keepdim=True), factor)


def _saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, _gray(images), factor)


def _hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``shift`` (fraction of a turn), keeping saturation and value."""
    r, g, b = images.unbind(1)
    high, low = images.amax(dim=1), images.amin(dim=1)
    delta = high - low
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(
        high == r, (g - b) / safe, torch.where(high == g, 2 + (b - r) / safe, 4 + (r - g) / safe)
    )
    hue6 = torch.remainder(hue + 6 * shift[:, :, 0, 0, None], 6.0)
    channels = [
        high - delta * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
        for k in (torch.remainder(n + hue6, 6.0) for n in (5.0, 3.0, 1.0))
    ]
    return torch.stack(channels, dim=1)


_COLOUR_OPS = {
    "brightness": _brightness,
    "contrast": _contrast,
    "saturation": _saturation,
    "hue": _hue,
}


def _rotation(radians: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(radians), torch.sin(radians)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def _homogeneous(linear: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 2, 2) linear part and (N, 2) offset -> (N, 3, 3)."""
    out = torch.zeros(linear.shape[0], 3, 3, device=linear.device, dtype=linear.dtype)
    out[:, :2, :2] = linear
    out[:, 2, 2] = 1
    if offset is not None:
        out[:, :2, 2] = offset
    return out


def _magnification(u: torch.Tensor, low: float, high: float, offset: float) -> torch.Tensor:
    """Zoom by a factor drawn log-uniformly from [low, high] about a centre moved by up to
    ``offset`` of the side: above 1 the output shows the middle of the image enlarged, below 1 the
    whole image smaller, framed by its own reflection (a wider field of the same smear or tissue
    rather than a black border)."""
    factor = torch.exp(_between(u[:, 0], math.log(low), math.log(high)))
    eye = torch.eye(2, device=u.device).expand(u.shape[0], 2, 2)
    return _homogeneous(eye / factor[:, None, None], _between(u[:, 1:3], -2 * offset, 2 * offset))


class BatchAugment(nn.Module):
    """Augment a float NCHW batch in [0, 1] of square images, each with its own random parameters.

    Geometry (random resized crop, rotation, shift, shear, zoom, flips, 90-degree turns) is composed
    into one sampling matrix per image and applied by a single bilinear ``grid_sample`` (zeros
    outside, as ``RandomAffine``; a reflected border with ``magnify``); colour jitter follows
    ``ColorJitter`` (its factors, its order drawn at random); then HED stain jitter
    (:mod:`histoclass.data.stain`), random grey, and random erasing (as ``RandomErasing``, filled
    with ``fill``, the backbone's mean colour, zero once standardised).
    """

    def __init__(
        self, augment: AugmentConfig, seed: int = 0, fill: tuple[float, ...] = (0.5, 0.5, 0.5)
    ) -> None:
        super().__init__()
        self.augment, self.seed = augment, seed
        self.register_buffer("fill", torch.tensor(fill).view(1, -1, 1, 1), persistent=False)
        a = augment
        self.geometric = bool(
            a.magnify is not None
            or (a.crop_scale is not None and a.crop_scale < 1)
            or a.rotation
            or a.shift
            or a.shear
            or a.zoom
            or a.hflip
            or a.vflip
            or a.rot90
        )
        self.colour = [name for name in _COLOUR_OPS if getattr(a, name)]

    @property
    def active(self) -> bool:
        a = self.augment
        return (
            self.geometric
            or bool(self.colour)
            or bool(a.stain)
            or bool(a.erasing)
            or bool(a.grayscale)
        )

    def forward(
        self, images: torch.Tensor, index: torch.Tensor, epoch: int, step: int = 0
    ) -> torch.Tensor:
        """``index``: each image's dataset index (on any device); ``step``: the batch's number in
        the epoch."""
        u = hashed_uniforms(self.seed, epoch, index, _DRAWS)
        if self.geometric:
            grid = F.affine_grid(
                self._sampling(u, images.shape[-1]), list(images.shape), align_corners=False
            )
            border = "reflection" if self.augment.magnify is not None else "zeros"
            images = F.grid_sample(
                images, grid.to(images.dtype), "bilinear", border, align_corners=False
            )
        if self.colour:
            images = self._jitter(images, u[:, 12:16], epoch, step)
        if self.augment.stain:
            s = self.augment.stain
            hed = u[:, _HED].to(images.dtype)
            images = hed_jitter(
                images, _between(hed[:, :3], 1 - s, 1 + s), _between(hed[:, 3:], -s, s)
            )
        if self.augment.grayscale:
            grey = (u[:, _GREY] < self.augment.grayscale).view(-1, 1, 1, 1)
            images = torch.where(grey, _gray(images).expand_as(images), images)
        if self.augment.erasing:
            images = torch.where(
                self._erased(u[:, _ERASE], images.shape[-1]), self.fill.to(images.dtype), images
            )
        return images

    def _erased(self, u: torch.Tensor, size: int) -> torch.Tensor:
        """(N, 1, S, S) masks of ``RandomErasing``'s rectangles: the first of 10 tries that fits,
        else none."""
        tries = u[:, 3:]
        area = _between(tries[:, :_CROP_TRIES], *_ERASE_SCALE) * size * size
        ratio = torch.exp(
            _between(tries[:, _CROP_TRIES:], math.log(_ERASE_RATIO[0]), math.log(_ERASE_RATIO[1]))
        )
        height, width = torch.round(torch.sqrt(area * ratio)), torch.round(torch.sqrt(area / ratio))
        fits = (height < size) & (width < size)
        first = torch.argmax(fits.int(), dim=1, keepdim=True)
        erase = fits.any(dim=1) & (u[:, 0] < self.augment.erasing)
        height, width = height.gather(1, first)[:, 0], width.gather(1, first)[:, 0]
        top, left = (
            torch.floor(u[:, 1] * (size - height + 1)),
            torch.floor(u[:, 2] * (size - width + 1)),
        )
        coords = torch.arange(size, device=u.device, dtype=u.dtype)
        rows = (coords[None] >= top[:, None]) & (coords[None] < (top + height)[:, None])
        cols = (coords[None] >= left[:, None]) & (coords[None] < (left + width)[:, None])
        return (rows[:, :, None] & cols[:, None, :] & erase[:, None, None])[:, None]

    def _sampling(self, u: torch.Tensor, size: int) -> torch.Tensor:
        """Output -> input coordinates (normalised, [-1, 1]): crop . affine^-1 . flips . rot90^-1,
        as (N, 2, 3)."""
        a = self.augment
        n, device = u.shape[0], u.device
        eye = torch.eye(2, device=device).expand(n, 2, 2)
        matrix = (
            self._crop(u, size)
            if a.crop_scale is not None and a.crop_scale < 1
            else _homogeneous(eye)
        )
        if a.rotation or a.shift or a.shear or a.zoom:
            matrix = matrix @ self._inverse_affine(u[:, 4:9], size)
        if a.magnify is not None:
            matrix = _magnification(u[:, _MAGNIFY], *a.magnify, a.magnify_offset) @ matrix
        signs = torch.ones(n, 2, device=device)
        if a.hflip:
            signs[:, 0] = torch.where(u[:, 9] < 0.5, -1.0, 1.0)
        if a.vflip:
            signs[:, 1] = torch.where(u[:, 10] < 0.5, -1.0, 1.0)
        matrix = matrix @ _homogeneous(torch.diag_embed(signs))
        if a.rot90:
            quarter_turns = torch.floor(u[:, 11] * 4).clamp(max=3)
            matrix = matrix @ _homogeneous(_rotation(-quarter_turns * (math.pi / 2)).round())
        return matrix[:, :2, :]

    def _crop(self, u: torch.Tensor, size: int) -> torch.Tensor:
        """``RandomResizedCrop(scale=(crop_scale, 1), ratio=(3/4, 4/3))`` in whole pixels, as
        torchvision: the first of 10 tries that fits, else the whole image; its offset uniform over
        the places where it fits."""
        tries = u[:, 16 : 16 + 2 * _CROP_TRIES]
        area = _between(tries[:, :_CROP_TRIES], float(self.augment.crop_scale), 1.0) * size * size
        ratio = torch.exp(_between(tries[:, _CROP_TRIES:], math.log(3 / 4), math.log(4 / 3)))
        width, height = torch.round(torch.sqrt(area * ratio)), torch.round(torch.sqrt(area / ratio))
        fits = (width > 0) & (width <= size) & (height > 0) & (height <= size)
        first = torch.argmax(fits.int(), dim=1, keepdim=True)
        ok = fits.any(dim=1)
        width = torch.where(ok, width.gather(1, first)[:, 0], float(size))
        height = torch.where(ok, height.gather(1, first)[:, 0], float(size))
        left = torch.floor(u[:, 2] * (size - width + 1))
        top = torch.floor(u[:, 3] * (size - height + 1))
        centre = torch.stack([left + width / 2, top + height / 2], dim=1) * (2 / size) - 1
        return _homogeneous(torch.diag_embed(torch.stack([width, height], 1) / size), centre)

    def _inverse_affine(self, u: torch.Tensor, size: int) -> torch.Tensor:
        """``RandomAffine``'s inverse matrix (torchvision's construction, whole-pixel shifts), normalised."""
        a = self.augment
        angle = torch.deg2rad(_between(u[:, 0], -a.rotation, a.rotation))
        pixels = torch.round(_between(u[:, 1:3], -a.shift * size, a.shift * size))
        shift = pixels * (2 / size)
        scale = _between(u[:, 3], 1 - a.zoom, 1 + a.zoom) if a.zoom else torch.ones_like(angle)
        shear = torch.deg2rad(_between(u[:, 4], -a.shear, a.shear))
        # Rotation-scale-shear with x-shear only, as torchvision for a single shear value (determinant 1).
        rss = torch.stack(
            [
                torch.stack(
                    [torch.cos(angle), -torch.cos(angle) * torch.tan(shear) - torch.sin(angle)], -1
                ),
                torch.stack(
                    [torch.sin(angle), -torch.sin(angle) * torch.tan(shear) + torch.cos(angle)], -1
                ),
            ],
            -2,
        )
        # Determinant 1: the inverse is the adjugate (no linalg call, which would wait for the GPU).
        inverse = (
            torch.stack(
                [
                    torch.stack([rss[:, 1, 1], -rss[:, 0, 1]], -1),
                    torch.stack([-rss[:, 1, 0], rss[:, 0, 0]], -1),
                ],
                -2,
            )
            / scale[:, None, None]
        )
        return _homogeneous(inverse, -(inverse @ shift[:, :, None])[:, :, 0])

    def _jitter(self, images: torch.Tensor, u: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        a = self.augment
        factors = {
            "brightness": _between(u[:, 0], max(0.0, 1 - a.brightness), 1 + a.brightness),
            "contrast": _between(u[:, 1], max(0.0, 1 - a.contrast), 1 + a.contrast),
            "saturation": _between(u[:, 2], max(0.0, 1 - a.saturation), 1 + a.saturation),
            "hue": _between(u[:, 3], -a.hue, a.hue),
        }
        # One random order per batch (each image still sees every order equally often), from (seed,
        # epoch, step): host-side, so choosing it never waits for the GPU.
        key = _mix32(_mix32((self.seed & _MASK) ^ _mix32(epoch & _MASK)) ^ _mix32(step & _MASK))
        order = torch.randperm(len(self.colour), generator=torch.Generator().manual_seed(key))
        for position in order.tolist():
            name = self.colour[position]
            images = _COLOUR_OPS[name](images, factors[name].view(-1, 1, 1, 1).to(images.dtype))
        return images
