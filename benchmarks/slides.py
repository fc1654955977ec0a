"""Synthetic whole slides made of real images: tiled, pyramidal TIFFs that OpenSlide and tiffslide both read.

A slide is white glass with "tissue" cells: real images pasted on a grid where the layout says so. Tiles are
generated on the fly, so a 40,000 x 40,000 slide is written without holding it in memory. ``aperio=True``
writes the Aperio SVS description (OpenSlide's ``aperio`` reader, ``MPP`` from it); otherwise the
resolution is in the TIFF resolution tags (``generic-tiff``).

    python -m benchmarks.slides       # tiles/s of `histoclass slide` vs the predictor, and peak memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

__all__ = ["cell_layout", "write_slide"]

TILE = 256


def cell_layout(images: list[Path], columns: int, rows: int, cell: int, seed: int = 0) -> Callable:
    """``pixels(x, y, w, h)`` of a level-0 canvas: image k (cycling) in grid cell (column, row) where the cell is
    tissue (an ellipse covering the middle of the canvas), white elsewhere."""
    loaded = [np.asarray(Image.open(p).convert("RGB").resize((cell, cell), Image.Resampling.BILINEAR)) for p in images]
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
                out[sy - y : ey - y, sx - x : ex - x] = loaded[choice[row, col]][sy - y0 : ey - y0, sx - x0 : ex - x0]
        return out

    pixels.tissue = tissue  # type: ignore[attr-defined]
    pixels.choice = choice  # type: ignore[attr-defined]
    return pixels


def _tiles(pixels: Callable, width: int, height: int, factor: int) -> Iterator[np.ndarray]:
    """The TILE x TILE tiles of the level ``factor`` times smaller, row by row (box-averaged from level 0)."""
    for ty in range(0, -(-height // factor), TILE):
        for tx in range(0, -(-width // factor), TILE):
            block = pixels(tx * factor, ty * factor, TILE * factor, TILE * factor).astype(np.float32)
            yield block.reshape(TILE, factor, TILE, factor, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def write_slide(
    path: Path, pixels: Callable, width: int, height: int, mpp: float = 0.5, levels: int = 3, aperio: bool = True
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
                _tiles(pixels, width, height, factor), shape=shape, dtype=np.uint8, tile=(TILE, TILE),
                photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                resolution=(1e4 / (mpp * factor), 1e4 / (mpp * factor)), resolutionunit="CENTIMETER",
                subfiletype=0 if level == 0 or aperio else 1, metadata=None,
                description=description if aperio and level == 0 else None,
            )  # fmt: skip
            if aperio and level == 0:  # an SVS's second page is a small stripped thumbnail, then the levels
                thumb = next(_tiles(pixels, TILE * 32, TILE * 32, 32))[: -(-height // 32), : -(-width // 32)]
                tiff.write(thumb, photometric="rgb", compression="jpeg", description="Aperio thumbnail", metadata=None)
    return path


def _peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """(seconds, peak resident MiB) of one command, measured by GNU time around it alone."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as report:
        started = time.perf_counter()
        subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", report.name, *command], check=True, stdout=subprocess.DEVNULL
        )
        elapsed = time.perf_counter() - started
        return elapsed, int(Path(report.name).read_text().split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory or exported model")
    parser.add_argument("--images", default="../shared/data/bloodcells/test_simple", help="real images to tile")
    parser.add_argument("--large", type=int, default=40_000, help="side of the large slide, pixels")
    parser.add_argument("--small", type=int, default=4_000, help="side of the small slide, pixels")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    sys.path.insert(0, "src")
    from histoclass.data.images import resize_square
    from histoclass.export.engines import open_predictor

    images = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"})[:64]
    predictor = open_predictor(args.model)  # the engine `slide` picks too
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, side in (("small", args.small), ("large", args.large)):
            layout = cell_layout(images, side // TILE, side // TILE, TILE)
            slide = write_slide(Path(folder) / f"{name}.svs", layout, side, side)
            out = Path(folder) / f"out-{name}"
            command = [sys.executable, "-m", "histoclass", "slide", args.model, str(slide), "--out", str(out),
                       "--level", "0", "--tile-size", str(TILE), "--batch-size", str(args.batch_size)]  # fmt: skip
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
        size = predictor.info.image_size
        tiles = [layout(x * TILE, y * TILE, TILE, TILE) for y in range(8) for x in range(8)]
        pixels = np.concatenate([np.stack([resize_square(Image.fromarray(t), size) for t in tiles])] * 16)
        predictor.predict_pixels(pixels[: args.batch_size])
        started = time.perf_counter()
        for start in range(0, len(pixels), args.batch_size):
            predictor.predict_pixels(pixels[start : start + args.batch_size])
        decoded = len(pixels) / (time.perf_counter() - started)
    for name, row in results.items():
        print(f"{name}: {row['side']}x{row['side']} px, {row['tiles']} tissue tiles, {row['seconds']:.1f} s, "
              f"{row['tiles_per_s']:.1f} tiles/s, peak RSS {row['peak_mib']:.0f} MiB")  # fmt: skip
    print(f"predictor on tiles already decoded and resized: {decoded:.1f} tiles/s")
    streaming = results["large"]["streaming_tiles_per_s"]
    print(f"large slide while streaming (read + decode + model): {streaming:.1f} tiles/s")
    whole = results["large"]["tiles_per_s"] / decoded
    print(f"slide / predictor: {streaming / decoded:.2f} while streaming, {whole:.2f} for the whole command")
    print(f"peak memory large / small: {results['large']['peak_mib'] / results['small']['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
