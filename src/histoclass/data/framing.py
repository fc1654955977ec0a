"""Framing: which part of an image the model sees before it is resized.

``field`` keeps the whole image. ``cell`` crops a square around the image's most strongly stained object
(a white blood cell's nucleus on a smear) at a fixed multiple of its size, so that one lab's wide fields
and another's tight crops show the cell at the same scale and in the middle: another lab's microscope and
camera change the framing as much as the stain (docs/benchmarks.md, another lab's cells).

Numpy, Pillow and SciPy only (and the config's names), so deployments without torch frame exactly as
training did.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from histoclass.config.train import Framing

__all__ = ["CELL_MARGIN", "Framing", "background_colour", "cell_square", "frame"]

#: The crop's side as a multiple of the stained object's larger side: a nucleus and its cytoplasm.
CELL_MARGIN = 1.8
#: The box is found on a copy at most this many pixels a side (the crop is cut from the full image).
_SEARCH_SIDE = 256
#: Pixels darker than this in every channel are padding (rotated copies, scanner borders), not stain.
_PADDING = 25
#: Optical densities spread less than this: nothing in the image is stained.
_FAINT = 0.05


def _otsu(values: np.ndarray) -> float:
    """The threshold that best splits ``values`` in two (Otsu's between-class variance)."""
    counts, edges = np.histogram(values, 64)
    share = counts / max(counts.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    below, mean_below = np.cumsum(share), np.cumsum(share * centres)
    between = (mean_below[-1] * below - mean_below) ** 2 / np.maximum(below * (1 - below), 1e-12)
    return float(centres[between.argmax()])


def background_colour(pixels: np.ndarray) -> np.ndarray:
    """The glass's RGB: the 90th percentile of each channel (stain only darkens)."""
    return np.percentile(pixels.reshape(-1, 3), 90, axis=0)


def _nucleus_density(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Optical density in the red channel: haematoxylin and its kin absorb red, eosin-pink red cells
    hardly do, so nuclei stand out whatever the stain's hue."""
    red = pixels[:, :, 0].astype(np.float32) + 1
    density = -np.log(np.minimum(red / (background[0] + 1), 1.0))
    # the padding and its blurred rim
    density[ndimage.binary_dilation(pixels.max(axis=2) < _PADDING, iterations=2)] = 0
    return ndimage.gaussian_filter(density, max(1.0, min(pixels.shape[:2]) / 100))


def cell_square(pixels: np.ndarray, background: np.ndarray) -> tuple[float, float, float]:
    """Centre x, centre y and side of the square around the image's most strongly stained object.

    The densest of the stained pixels (Otsu twice: stain against background, then nuclei against the rest),
    joined over small gaps so that a lobed nucleus counts as one, and the group holding most of them.
    ``background`` is the glass's colour (:func:`background_colour`).
    """
    height, width = pixels.shape[:2]
    density = _nucleus_density(pixels, background)
    if np.ptp(density) < _FAINT:  # nothing stained (empty glass, a blank image): the whole image
        return width / 2, height / 2, float(min(width, height))
    stained = density > _otsu(density.ravel())
    nuclei = density > _otsu(density[stained])
    reach = max(1, round(min(width, height) * 0.04))
    groups, count = ndimage.label(ndimage.binary_dilation(nuclei, iterations=reach))
    largest = np.bincount(groups[nuclei], minlength=count + 1)[1:].argmax() + 1
    ys, xs = np.nonzero(nuclei & (groups == largest))
    side = max(xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min(), 0.1 * min(width, height))
    return (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2, float(side * CELL_MARGIN)


def frame(image: Image.Image, framing: Framing) -> Image.Image:
    """``image`` as the model sees it before resizing: whole (``field``) or the square around its cell,
    padded with the background's colour where the square leaves the image."""
    if framing == "field":
        return image
    scale = max(1, -(-max(image.size) // _SEARCH_SIDE))
    small = np.asarray(image.reduce(scale) if scale > 1 else image)
    background = background_colour(small)
    x, y, side = (value * scale for value in cell_square(small, background))
    fill = tuple(int(v) for v in background)
    box = (x - side / 2, y - side / 2, x + side / 2, y + side / 2)
    out = round(side)
    return image.transform(
        (out, out), Image.Transform.EXTENT, box, Image.Resampling.BILINEAR, fillcolor=fill
    )
