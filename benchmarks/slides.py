"""Synthetic whole slides made of real images: tiled, pyramidal TIFFs that OpenSlide and tiffslide both read.

A slide is white glass with "tissue" cells: real images pasted on a grid where the layout says so. Tiles are
generated on the fly, so a 40,000 x 40,000 slide is written without holding it in memory. ``aperio=True``
writes the Aperio SVS description (OpenSlide's ``aperio`` reader, ``MPP`` from it); otherwise the
resolution is in the TIFF resolution tags (``generic-tiff``).

    python -m benchmarks.slides       # tiles/s of `histoclass slide` vs the predictor, and peak memory
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

__all__ = ["cell_layout", "write_slide"]

TILE = 256


def cell_layout(images: list[Path], columns: int, rows: int, cell: int, seed: int = 0) -> Callable:
    """``pixels(x, y, w, h)`` of a level-0 canvas: image k (cycling) in grid cell (column, row)
    where the cell is tissue (an ellipse covering the middle of the canvas), white elsewhere."""
    loaded = [
        np.asarray(Image.open(p).convert("RGB").resize((cell, cell), Image.Resampling.BILINEAR))
        for p in images
    ]
    rng = np.random.default_rng(seed)
    cy, cx = (rows - 1) / 2, (columns - 1) / 2
    yy, xx = np.mgrid[0:rows, 0:columns]
    tissue = ((yy - cy) / max(rows / 2.6, 1)) ** 2 + ((xx - cx) / max(columns / 2.6, 1)) ** 2 <= 1
    tissue &= bool(loaded)  # no images: a slide of bare glass
    choice = rng.integers(0, max(1, len(loaded)), size=(rows, columns))

    def pixels(x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), 245, np.uint8)
        for row in range(y // cell, min(rows, (y + h - 1) // cell + 1)):
            for col in range(x // cell, min(columns, (x + w - 1) // cell + 1)):
                if not tissue[row, col]:
                    continue
                x0, y0 = col * cell, row * cell
                sx, sy = max(x, x0), max(y, y0)
                ex, ey = min(x + w, x0 + cell), min(y + h, y0 + cell)
                out[sy - y : ey - y, sx - x : ex - x] = loaded[choice[row, col]][
                    sy - y0 : ey - y0, sx - x0 : ex - x0
                ]
        return out

    pixels.tissue = tissue  # type: ignore[attr-defined]
    pixels.choice = choice  # type: ignore[attr-defined]
    return pixels


def _tiles(pixels: Callable, width: int, height: int, factor: int) -> Iterator[np.ndarray]:
    """The TILE x TILE tiles of the level ``factor`` times smaller, row by row (box-averaged from level 0)."""
    for ty in range(0, -(-height // factor), TILE):
        for tx in range(0, -(-width // factor), TILE):
            block = pixels(tx * factor, ty * factor, TILE * factor, TILE * factor).astype(
                np.float32
            )
            yield (
                block.reshape(TILE, factor, TILE, factor, 3)
                .mean(axis=(1, 3))
                .round()
                .astype(np.uint8)
            )


def write_slide(
    path: Path,
    pixels: Callable,
    width: int,
    height: int,
    mpp: float = 0.5,
    levels: int = 3,
    aperio: bool = True,
) -> Path:
    """A tiled RGB pyramid (each level 4x smaller) with its resolution, JPEG-compressed as scanners write."""
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**31) as tiff:
        for level in range(levels):
            factor = 4**level
            shape = (-(-height // factor), -(-width // factor), 3)
            description = (
                f"Aperio Image Library v12.0.15\r\n{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) "
                f"JPEG/RGB Q=90|AppMag = {round(10 / mpp)}|MPP = {mpp}"
            )
            tiff.write(
                _tiles(pixels, width, height, factor),
                shape=shape,
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 90},
                resolution=(1e4 / (mpp * factor), 1e4 / (mpp * factor)),
                resolutionunit="CENTIMETER",
                subfiletype=0 if level == 0 or aperio else 1,
                metadata=None,
                description=description if aperio and level == 0 else None,
            )
            # an SVS's second page is a small stripped thumbnail, then the levels
            if aperio and level == 0:
                thumb = next(_tiles(pixels, TILE * 32, TILE * 32, 32))[
                    : -(-height // 32), : -(-width // 32)
                ]
                tiff.write(
                    thumb,
                    photometric="rgb",
                    compression="jpeg",
                    description="Aperio thumbnail",
                    metadata=None,
                )
    return path


def _peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """(seconds, peak resident MiB) of one command, measured by GNU time around it alone."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as report:
        started = time.perf_counter()
        subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", report.name, *command],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        elapsed = time.perf_counter() - started
        return elapsed, int(Path(report.name).read_text().split()[-1]) / 1024


def _tissue_tiles(slide_path: Path, tiles_csv: Path, count: int = 1024) -> list[np.ndarray]:
    """The first ``count`` tissue tiles the slide map classified, read from the slide as it read them."""
    from histoclass.slides.readers import open_slide

    with tiles_csv.open(newline="") as handle:
        boxes = [
            [int(row[k]) for k in ("x", "y", "width")]
            for row in list(csv.DictReader(handle))[:count]
        ]
    slide = open_slide(slide_path)
    try:
        return [slide.read(x, y, 0, w, w) for x, y, w in boxes]
    finally:
        slide.close()


@dataclass
class _Decoded:
    """Tiles already decoded, loaded like any image by the predictor's own loader: resized to the input."""

    tiles: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.tiles)

    def load(self, i: int, size: int) -> np.ndarray:
        from histoclass.data.images import resize_square

        return resize_square(Image.fromarray(self.tiles[i]), size)


def _rate(run: Callable[[], int], rounds: int = 3) -> float:
    """Items per second of ``run`` (which returns how many it did): the median of ``rounds`` after a
    warm-up."""
    run()
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        done = run()
        rates.append(done / (time.perf_counter() - started))
    return float(np.median(rates))


def _baselines(predictor: Any, tiles: list[np.ndarray], batch_size: int) -> tuple[float, float]:
    """Tiles/s of the model alone on tiles already resized, and of the predictor on tiles already decoded
    (resized on its loader threads while the model runs, as ``predict`` does)."""
    from histoclass.data.batches import iter_batches

    size = predictor.info.image_size
    decoded = _Decoded(tiles)
    resized = np.stack([decoded.load(i, size) for i in range(len(decoded))])

    def model_alone() -> int:
        for start in range(0, len(resized), batch_size):
            predictor.predict_pixels(resized[start : start + batch_size])
        return len(resized)

    def predictor_on_decoded() -> int:
        for batch in iter_batches(decoded, size, batch_size):
            predictor.predict_pixels(batch.pixels)
        return len(decoded)

    return _rate(model_alone), _rate(predictor_on_decoded)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="run directory or exported model")
    parser.add_argument(
        "--images", default="../shared/data/bloodcells/test_simple", help="real images to tile"
    )
    parser.add_argument("--large", type=int, default=40_000, help="side of the large slide, pixels")
    parser.add_argument("--small", type=int, default=4_000, help="side of the small slide, pixels")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    sys.path.insert(0, "src")
    from histoclass.deploy.engines import open_predictor

    images = sorted(
        p for p in Path(args.images).rglob("*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"}
    )[:64]
    predictor = open_predictor(args.model)  # the engine `slide` picks too
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, side in (("small", args.small), ("large", args.large)):
            layout = cell_layout(images, side // TILE, side // TILE, TILE)
            slide = write_slide(Path(folder) / f"{name}.svs", layout, side, side)
            out = Path(folder) / f"out-{name}"
            command = [
                sys.executable,
                "-m",
                "histoclass",
                "slide",
                args.model,
                str(slide),
                "--out",
                str(out),
                "--level",
                "0",
                "--tile-size",
                str(TILE),
                "--batch-size",
                str(args.batch_size),
            ]
            seconds, peak = _peak_rss_mib(command)
            summary = json.loads((out / name / "summary.json").read_text())
            tiles, streaming = summary["tiles"], summary["tiles_per_second"]
            results[name] = {
                "side": side,
                "tiles": tiles,
                "seconds": seconds,
                "tiles_per_s": tiles / seconds,
                "streaming_tiles_per_s": streaming,
                "peak_mib": peak,
            }
        tiles = _tissue_tiles(
            Path(folder) / "large.svs", Path(folder) / "out-large" / "large" / "tiles.csv"
        )
        model_alone, on_decoded = _baselines(predictor, tiles, args.batch_size)
    for name, row in results.items():
        print(
            f"{name}: {row['side']}x{row['side']} px, {row['tiles']} tissue tiles, {row['seconds']:.1f} s, "
            f"{row['tiles_per_s']:.1f} tiles/s, peak RSS {row['peak_mib']:.0f} MiB"
        )
    streaming = results["large"]["streaming_tiles_per_s"]
    print(f"large slide while streaming (read + decode + resize + model): {streaming:.1f} tiles/s")
    print(
        f"predictor on the same tissue tiles already decoded (resize + model): {on_decoded:.1f} tiles/s"
    )
    print(f"model alone on the same tiles already decoded and resized: {model_alone:.1f} tiles/s")
    print(f"streaming / predictor on decoded tiles: {streaming / on_decoded:.2f}")
    print(f"streaming / model alone: {streaming / model_alone:.2f}")
    print(
        f"whole command / predictor on decoded tiles: {results['large']['tiles_per_s'] / on_decoded:.2f}"
    )
    print(
        f"peak memory large / small: {results['large']['peak_mib'] / results['small']['peak_mib']:.2f}"
    )


if __name__ == "__main__":
    main()
