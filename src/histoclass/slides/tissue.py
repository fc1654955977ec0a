"""Where the tissue is: Otsu on a thumbnail's saturation and grey level, closed, specks removed, holes filled.

Stained tissue is coloured or darker than the glass, which is bright and grey; a pixel is tissue
when either says so, each with a floor (saturation 20, grey 230) so a slide with only glass gives an
empty mask, not noise. Closing joins the cells and fibres of one piece of tissue; specks (dust) go,
small holes (lumina) are filled.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["MAX_GREY", "MIN_SATURATION", "otsu_threshold", "tissue_fractions", "tissue_mask"]

#: Below this saturation, and above this grey level (0-255), nothing is tissue whatever Otsu says.
MIN_SATURATION, MAX_GREY = 20, 230
#: Specks and holes smaller than this share of the thumbnail are cleaned up.
_SMALL = 0.0005


def otsu_threshold(values: np.ndarray) -> float:
    """The grey level that best splits ``values`` (uint8) into two classes (Otsu 1979)."""
    histogram = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    weight = np.cumsum(histogram)
    total = weight[-1]
    mean = np.cumsum(histogram * np.arange(256))
    between = (mean[-1] * weight / total - mean) ** 2 / np.maximum(weight * (total - weight), 1e-12)
    return float(np.argmax(between[:-1]))


def _saturation(rgb: np.ndarray) -> np.ndarray:
    top = rgb.max(axis=2).astype(np.float32)
    bottom = rgb.min(axis=2).astype(np.float32)
    return np.where(top > 0, (top - bottom) / np.maximum(top, 1) * 255, 0).astype(np.uint8)


def _remove_small(mask: np.ndarray, smallest: int) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= smallest
    keep[0] = False
    return keep[labels]


def _closed(mask: np.ndarray, side: int) -> np.ndarray:
    """Binary closing by a ``side`` x ``side`` square, outside the thumbnail counted as glass: the same as
    ``binary_closing`` with that structure, as separable running max and min (16x faster at 2048 pixels)."""
    dilated = ndimage.maximum_filter(mask, size=side, mode="constant", cval=0)
    return ndimage.minimum_filter(dilated, size=side, mode="constant", cval=0)


def tissue_mask(thumbnail: np.ndarray) -> np.ndarray:
    """Booleans, True on tissue, for a uint8 H x W x 3 thumbnail."""
    smooth = (
        ndimage.uniform_filter(thumbnail.astype(np.float32), size=(3, 3, 1))
        .round()
        .astype(np.uint8)
    )
    saturation, grey = _saturation(smooth), smooth.mean(axis=2).round().astype(np.uint8)
    coloured = saturation > max(otsu_threshold(saturation), MIN_SATURATION)
    dark = grey < min(otsu_threshold(grey), MAX_GREY)
    mask = _closed(coloured | dark, 2 * max(1, min(grey.shape) // 200) + 1)
    mask = ndimage.binary_opening(mask, iterations=1)
    smallest = max(4, int(_SMALL * mask.size))
    mask = _remove_small(mask, smallest)
    holes = ndimage.binary_fill_holes(mask) & ~mask
    return mask | (holes & ~_remove_small(holes, smallest))


def tissue_fractions(mask: np.ndarray, boxes: np.ndarray, scale: float) -> np.ndarray:
    """The tissue share of each level-0 box (N x 4: x, y, width, height), read from a mask ``scale`` times
    smaller than level 0, with an integral image (any number of boxes in one pass)."""
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    height, width = mask.shape
    x0 = np.clip(np.floor(boxes[:, 0] / scale).astype(int), 0, width)
    y0 = np.clip(np.floor(boxes[:, 1] / scale).astype(int), 0, height)
    x1 = np.clip(np.ceil((boxes[:, 0] + boxes[:, 2]) / scale).astype(int), 0, width)
    y1 = np.clip(np.ceil((boxes[:, 1] + boxes[:, 3]) / scale).astype(int), 0, height)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return np.clip(inside / area, 0.0, 1.0)
