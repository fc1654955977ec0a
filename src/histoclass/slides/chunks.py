"""Regions of a tiled TIFF pyramid (SVS, generic tiled TIFF) assembled from the file's own decoded tiles.

OpenSlide paints every region through cairo into premultiplied ARGB: about 1.2 ms for a 256-pixel
tile, of which the JPEG decode is 0.18 ms; tiffslide goes through zarr's event loop and takes about
1 ms. Decoding the TIFF's tiles with tifffile (libjpeg-turbo through imagecodecs) gives the same
pixels five times cheaper, which is most of what a slide map costs besides the model. It is used
only where it was checked: a slide's levels are matched to TIFF pages by size, and regions read both
ways must be equal before any tile is read this way.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TiffChunks", "open_chunks"]

#: Decoded tiles kept for the neighbouring regions that share them (tiles are read row by row).
_CACHE_BYTES = 16 * 2**20
_JPEG = {6, 7, 33007, 34892}  # the compressions whose tiles need the page's JPEG tables

Reader = Callable[[int, int, int, int, int], np.ndarray]


class _Level:
    """One pyramid level's TIFF page: where each tile's bytes are, and how to decode them."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.tile_height, self.tile_width = int(page.tilelength), int(page.tilewidth)
        self.across = -(-self.width // self.tile_width)
        self.decode_args = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}
        if page.compression not in _JPEG:
            self.decode_args = {}


def _readable(page: Any) -> bool:
    """A tiled, 8-bit, 3-sample, interleaved page: what a brightfield scanner writes."""
    return (
        page.is_tiled
        and int(page.tiledepth) == 1
        and int(page.samplesperpixel) == 3
        and int(page.planarconfig) == 1
        and np.dtype(page.dtype) == np.uint8
    )


class TiffChunks:
    """Regions at the levels whose pages were matched, answered like ``Slide.read`` (white outside
    the level)."""

    def __init__(
        self, path: Path, tiff: Any, levels: dict[int, _Level], downsamples: list[float]
    ) -> None:
        self.tiff, self.levels, self.downsamples = tiff, levels, downsamples
        self.handle = path.open("rb")
        self.lock = threading.Lock()
        self.cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self.cached_bytes = 0

    def read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray | None:
        """The region, or None where this level or position is not read here (the slide's reader answers)."""
        found = self.levels.get(level)
        downsample = self.downsamples[level]
        # OpenSlide interpolates between pixels there
        if found is None or x % downsample or y % downsample:
            return None
        left, top = int(x // downsample), int(y // downsample)
        out = np.full((height, width, 3), 255, np.uint8)
        right, bottom = min(left + width, found.width), min(top + height, found.height)
        if right <= max(left, 0) or bottom <= max(top, 0):  # wholly outside the level
            return out
        for row in range(max(top, 0) // found.tile_height, -(-bottom // found.tile_height)):
            for column in range(max(left, 0) // found.tile_width, -(-right // found.tile_width)):
                tile = self._tile(level, found, row, column)
                # a tile the scanner left out reads as glass, as OpenSlide shows it
                if tile is None:
                    continue
                y0, x0 = row * found.tile_height, column * found.tile_width
                sy, sx = max(top, y0), max(left, x0)
                ey, ex = min(bottom, y0 + tile.shape[0]), min(right, x0 + tile.shape[1])
                out[sy - top : ey - top, sx - left : ex - left] = tile[
                    sy - y0 : ey - y0, sx - x0 : ex - x0
                ]
        return out

    def _tile(self, level: int, found: _Level, row: int, column: int) -> np.ndarray | None:
        key = (level, row * found.across + column)
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
            index = key[1]
            offset, count = found.page.dataoffsets[index], found.page.databytecounts[index]
            self.handle.seek(offset)
            data = self.handle.read(count) if count else b""
        tile = None
        # decoded outside the lock: imagecodecs releases the GIL, so reader threads decode in parallel
        if data:
            decoded = found.page.decode(data, index, **found.decode_args)[0]
            tile = np.asarray(decoded).reshape(decoded.shape[-3:])
        with self.lock:
            self.cache[key] = tile
            self.cached_bytes += 0 if tile is None else tile.nbytes
            while self.cached_bytes > _CACHE_BYTES and len(self.cache) > 1:
                _, dropped = self.cache.popitem(last=False)
                self.cached_bytes -= 0 if dropped is None else dropped.nbytes
        return tile

    def close(self) -> None:
        self.handle.close()
        self.tiff.close()


def _match_levels(tiff: Any, dimensions: list[tuple[int, int]]) -> dict[int, _Level]:
    """Each slide level that a readable TIFF page of exactly its size holds."""
    pages = {}
    for page in tiff.pages:
        if _readable(page):
            pages.setdefault((int(page.imagewidth), int(page.imagelength)), page)
    return {level: _Level(pages[size]) for level, size in enumerate(dimensions) if size in pages}


def _probes(level: _Level, downsample: float) -> list[tuple[int, int, int, int]]:
    """Level-0 regions that cross tile boundaries in the middle of the level and run past its far corner."""
    middle_x = max(0, (level.width // 2 // level.tile_width) * level.tile_width - 17)
    middle_y = max(0, (level.height // 2 // level.tile_height) * level.tile_height - 23)
    corner_x, corner_y = max(0, level.width - 50), max(0, level.height - 30)
    return [
        (int(middle_x * downsample), int(middle_y * downsample), 120, 90),
        (int(corner_x * downsample), int(corner_y * downsample), 80, 70),
    ]


def _agrees(chunks: TiffChunks, level: int, reference: Reader) -> bool:
    probes = _probes(chunks.levels[level], chunks.downsamples[level])
    return all(
        np.array_equal(chunks.read(x, y, level, w, h), reference(x, y, level, w, h))
        for x, y, w, h in probes
    )


def open_chunks(
    path: Path, dimensions: list[tuple[int, int]], downsamples: list[float], reference: Reader
) -> TiffChunks | None:
    """Direct tile reads for ``path`` where its pages hold the slide's levels and agree with ``reference``
    (the slide's own reader) pixel for pixel; None where not (another format, or any difference)."""
    if (
        importlib.util.find_spec("tifffile") is None
        or importlib.util.find_spec("imagecodecs") is None
    ):
        return None
    import tifffile

    try:
        tiff = tifffile.TiffFile(path)
    except Exception:
        # not a TIFF (MRXS, DICOM, ...), or one tifffile cannot parse: the reader stays
        return None
    chunks = TiffChunks(path, tiff, {}, downsamples)
    try:
        for level, found in _match_levels(tiff, dimensions).items():
            if downsamples[level] == int(downsamples[level]):
                chunks.levels[level] = found
                if not _agrees(chunks, level, reference):
                    del chunks.levels[level]
    except Exception:
        # a compression imagecodecs lacks, a damaged tile: the slide's reader reads it all
        chunks.levels = {}
    if not chunks.levels:
        chunks.close()
        return None
    return chunks
