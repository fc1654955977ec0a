"""Which tiles to cut: the pyramid level and tile size that match the resolution the model was trained at.

A tile must show what a training image showed. With the training images' resolution (``--train-mpp``
at training, or ``--mpp`` here) and the slide's, a tile covers the same microns. It is read from the
coarsest pyramid level that still has at least the model's input size in pixels (fewest pixels
decoded, never enlarged), then resized to the model's input like any image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from histoclass.console import console
from histoclass.errors import HistoclassError
from histoclass.runs import ModelInfo
from histoclass.slides.readers import Slide

__all__ = ["TileGrid", "plan_grid", "require_resolution"]


@dataclass(frozen=True)
class TileGrid:
    """Tiles as level-0 boxes: read ``read_size`` pixels square at ``level`` for each ``(x, y)``."""

    level: int
    read_size: int
    size0: int
    step0: int
    mpp: float | None
    columns: int
    rows: int

    def boxes(self) -> np.ndarray:
        """N x 4 level-0 boxes (x, y, width, height), row by row."""
        ys, xs = np.mgrid[0 : self.rows, 0 : self.columns]
        corners = np.stack([xs.ravel() * self.step0, ys.ravel() * self.step0], axis=1)
        sizes = np.full((corners.shape[0], 2), self.size0)
        return np.concatenate([corners, sizes], axis=1).astype(np.int64)

    def describe(self) -> dict:
        return asdict(self)


def _best_level(slide: Slide, wanted: float) -> int:
    """The coarsest level whose downsample does not exceed ``wanted``: level-0 pixels per
    model-input pixel."""
    fitting = [i for i, d in enumerate(slide.level_downsamples) if d <= wanted * 1.001]
    return max(fitting, key=lambda i: slide.level_downsamples[i]) if fitting else 0


def require_resolution(slide: Slide, mpp: float | None) -> None:
    """``--mpp`` needs the slide's own resolution: one line naming the way out when it has none."""
    if mpp is not None and slide.mpp is None:
        raise HistoclassError(
            f"slide '{slide.path.name}' has no resolution metadata, so --mpp {mpp} cannot be honoured; "
            "pass --level N (and --tile-size) to tile at a pyramid level instead"
        )


def _target_mpp(slide: Slide, info: ModelInfo, mpp: float | None) -> float | None:
    require_resolution(slide, mpp)
    target = mpp if mpp is not None else info.mpp
    if target is None or slide.mpp is None:
        why = (
            "the run has no training resolution (train with --train-mpp)"
            if target is None
            else "slide has none"
        )
        console.print(
            f"[yellow]tiling '{slide.path.name}' at a pyramid level, not a physical resolution: {why}[/]"
        )
        return None
    return target


def plan_grid(
    slide: Slide,
    info: ModelInfo,
    mpp: float | None = None,
    level: int | None = None,
    tile_size: int | None = None,
    overlap: int = 0,
) -> TileGrid:
    """The tiling of ``slide`` for a model described by ``info`` (see the module docstring)."""
    target = _target_mpp(slide, info, mpp) if level is None else None
    tile = tile_size or (
        info.tile_pixels if target is not None and info.tile_pixels else info.image_size
    )
    if overlap >= tile:
        raise HistoclassError(f"--overlap {overlap} must be smaller than the tile ({tile} pixels)")
    if target is not None:
        scale = target / slide.mpp  # level-0 pixels per tile pixel
        level = _best_level(slide, round(tile * scale) / info.image_size)
    else:
        level = level or 0
        if level >= len(slide.level_downsamples):
            raise HistoclassError(
                f"--level {level}: '{slide.path.name}' has levels 0-{len(slide.level_downsamples) - 1}"
            )
        scale = slide.level_downsamples[level]
    size0, step0 = round(tile * scale), max(1, round((tile - overlap) * scale))
    read_size = max(1, round(size0 / slide.level_downsamples[level]))
    width, height = slide.dimensions
    columns = max(0, (width - size0) // step0 + 1) if width >= size0 else 0
    rows = max(0, (height - size0) // step0 + 1) if height >= size0 else 0
    resolution = slide.mpp * scale if slide.mpp else None
    return TileGrid(level, read_size, size0, step0, resolution, columns, rows)
