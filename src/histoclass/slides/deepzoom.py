"""A slide as Deep Zoom (DZI): the pyramid a browser viewer (OpenSeadragon) pans and zooms through.

Deep Zoom level ``L`` shows the slide at scale ``2 ** (L - top)``; its tiles are ``tile`` pixels square plus
``overlap`` pixels shared with each neighbour. Each tile is read from the slide's own pyramid level closest
above the scale wanted (through :meth:`Slide.read`, so the fast TIFF-tile path and the white glass apply) and
resized down, as OpenSlide's ``DeepZoomGenerator`` does.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image

from histoclass.errors import HistoclassError
from histoclass.slides.readers import Slide

__all__ = ["DeepZoom"]


@dataclass
class DeepZoom:
    """The Deep Zoom view of an open slide."""

    slide: Slide
    tile: int = 254
    overlap: int = 1
    quality: int = 80

    @property
    def top(self) -> int:
        """The full-resolution level: the first whose scale halves the larger side down to one pixel."""
        return math.ceil(math.log2(max(self.slide.dimensions)))

    def level_size(self, level: int) -> tuple[int, int]:
        scale = 2.0 ** (level - self.top)
        width, height = self.slide.dimensions
        return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))

    def dzi(self) -> str:
        """The DZI descriptor OpenSeadragon opens."""
        width, height = self.slide.dimensions
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
            f'Format="jpeg" Overlap="{self.overlap}" TileSize="{self.tile}">'
            f'<Size Width="{width}" Height="{height}"/></Image>'
        )

    def _bounds(self, level: int, column: int, row: int) -> tuple[int, int, int, int]:
        """The tile's pixels at ``level``: left, top, right, bottom, overlaps included."""
        width, height = self.level_size(level)
        left, top = column * self.tile, row * self.tile
        if not (0 <= level <= self.top and 0 <= left < width and 0 <= top < height):
            raise HistoclassError(f"no tile {column}_{row} at level {level} of '{self.slide.name}'")
        left, top = max(0, left - self.overlap), max(0, top - self.overlap)
        right = min(width, (column + 1) * self.tile + self.overlap)
        bottom = min(height, (row + 1) * self.tile + self.overlap)
        return left, top, right, bottom

    def _source_level(self, downsample: float) -> int:
        """The slide level with the most detail not finer than needed (at most ``downsample``)."""
        fitting = [
            k for k, d in enumerate(self.slide.level_downsamples) if d <= downsample * 1.0001
        ]
        return fitting[-1] if fitting else 0

    def tile_image(self, level: int, column: int, row: int) -> Image.Image:
        left, top, right, bottom = self._bounds(level, column, row)
        downsample = 2.0 ** (self.top - level)  # level-0 pixels per pixel of this level
        source = self._source_level(downsample)
        # source pixels per pixel of this level
        factor = downsample / self.slide.level_downsamples[source]
        x0, y0 = round(left * downsample), round(top * downsample)
        width, height = math.ceil((right - left) * factor), math.ceil((bottom - top) * factor)
        region = Image.fromarray(self.slide.read(x0, y0, source, width, height))
        size = (right - left, bottom - top)
        return region if region.size == size else region.resize(size, Image.Resampling.LANCZOS)

    def tile_jpeg(self, level: int, column: int, row: int) -> bytes:
        """Tile ``column``, ``row`` of Deep Zoom level ``level`` as JPEG bytes."""
        buffer = io.BytesIO()
        self.tile_image(level, column, row).save(buffer, "JPEG", quality=self.quality)
        return buffer.getvalue()
