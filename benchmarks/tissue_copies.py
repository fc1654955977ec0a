"""Tissue tiles with a known source, cut from a real slide: what the audit must recover on H&E.

Three sets, each written as class folders with a ``truth.csv`` (copy id -> source), as benchmarks/copies.py:

- ``augmented``: distinct 150 px tissue tiles, each copied 10 times as Keras' generator copies a
  tile (rotation ±20° leaving black corners, shifts up to 15 px, horizontal flips, brightness and
  contrast ±15%);
- ``overlapping``: distinct anchor tiles, each with 5 tiles cut around it that share 25-75% of its
  area: the tiles a tiler cuts with overlap, unaugmented;
- ``textureless``: glass tiles (no tissue), copied as in ``augmented``.

Class folders split each set's sources in two by stain (haematoxylin-rich "purple", eosin-rich "pink"; the
glass by brightness), since a dataset has at least two classes. Sources never share a pixel, even after a
shift: augmented sources lie ``SIZE + 30`` pixels apart, anchors of overlapping tiles ``SIZE + 2 * 115`` (a
tile sharing 25% of its anchor lies at most 113 pixels off).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from benchmarks.copies import TRUTH
from PIL import Image
from torchvision.transforms import v2

from histoclass.slides.readers import open_slide
from histoclass.slides.tissue import tissue_mask

__all__ = ["SETS", "make_tissue_sets"]

SIZE = 150
SETS = ("augmented", "overlapping", "textureless")


def keras_augmentation() -> v2.Compose:
    """The issue's copies: rotation ±20° (black corners), shift ≤ 15 px, horizontal flip, ±15%
    brightness/contrast."""
    return v2.Compose(
        [
            v2.RandomAffine(degrees=20, translate=(15 / SIZE, 15 / SIZE), fill=0),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.15, contrast=0.15),
        ]
    )


def _spread(
    candidates: list[tuple[int, int]], count: int, spacing: int, rng
) -> list[tuple[int, int]]:
    """Up to ``count`` of the (x, y) corners, in random order, no two closer than ``spacing`` in both axes."""
    chosen: list[tuple[int, int]] = []
    for k in rng.permutation(len(candidates)):
        x, y = candidates[k]
        if all(abs(x - a) >= spacing or abs(y - b) >= spacing for a, b in chosen):
            chosen.append((x, y))
        if len(chosen) == count:
            break
    return chosen


def _corners(mask: np.ndarray, tissue: float, margin: int) -> list[tuple[int, int]]:
    """Tile corners (on a SIZE/3 grid) with at least a ``tissue`` share of tissue (none at all when 0), with
    ``margin`` of the slide around."""
    height, width = mask.shape
    found = []
    for y in range(margin, height - SIZE - margin, SIZE // 3):
        for x in range(margin, width - SIZE - margin, SIZE // 3):
            share = mask[y : y + SIZE, x : x + SIZE].mean()
            if (share >= tissue) if tissue else (share == 0.0):
                found.append((x, y))
    return found


def _offset(rng: np.random.Generator) -> tuple[int, int]:
    """A shift whose tile shares 25-75% of the anchor tile's area."""
    while True:
        dx, dy = rng.integers(-SIZE + 1, SIZE, size=2)
        share = (SIZE - abs(dx)) * (SIZE - abs(dy)) / SIZE**2
        if 0.25 <= share <= 0.75:
            return int(dx), int(dy)


def _classes(pixels: np.ndarray, corners: list[tuple[int, int]], glass: bool) -> list[str]:
    """Each source's class folder: above or below the median blue/red ratio (the glass: grey level)."""
    tiles = [pixels[y : y + SIZE, x : x + SIZE].astype(np.float32) for x, y in corners]
    values = np.array([t.mean() if glass else t[..., 2].mean() / t[..., 0].mean() for t in tiles])
    names = ("dim", "bright") if glass else ("pink", "purple")
    return [names[int(v > np.median(values))] for v in values]


def _write(
    out: Path, name: str, rows: list, folder: str, tile: np.ndarray, source: int, rng
) -> None:
    (out / folder).mkdir(parents=True, exist_ok=True)
    file = f"{rng.integers(10**9):09d}.png"
    Image.fromarray(tile).save(out / folder / file)
    rows.append((f"{folder}/{file}", source, name))


def make_tissue_sets(
    slide_path: Path, out: Path, sources: int = 24, copies: int = 10, seed: int = 0
) -> dict:
    """Write the three sets under ``out/<set>/``; returns {set: folder}."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    slide = open_slide(slide_path)
    width, height = slide.dimensions
    pixels = slide.read(0, 0, 0, width, height)
    mask = tissue_mask(pixels)
    tissue = _spread(_corners(mask, 0.75, SIZE), sources, SIZE + 30, rng)
    anchors = _spread(_corners(mask, 0.5, SIZE), sources, SIZE + 2 * 115, rng)
    glass = _spread(_corners(mask, 0.0, SIZE), max(4, sources // 3), SIZE + 30, rng)
    augment = keras_augmentation()
    folders = {}
    for name, corners in (("augmented", tissue), ("overlapping", anchors), ("textureless", glass)):
        folder, rows = out / name, []
        classes = _classes(pixels, corners, name == "textureless")
        for number, (x, y) in enumerate(corners):
            if name == "overlapping":
                shifts = [(0, 0)] + [_offset(rng) for _ in range(5)]
                for dx, dy in shifts:
                    tile = pixels[y + dy : y + dy + SIZE, x + dx : x + dx + SIZE]
                    _write(
                        folder,
                        f"{x}_{y}",
                        rows,
                        classes[number],
                        np.ascontiguousarray(tile),
                        number,
                        rng,
                    )
                continue
            tile = torch.from_numpy(pixels[y : y + SIZE, x : x + SIZE]).permute(2, 0, 1)
            for _ in range(copies):
                copy = augment(tile).permute(1, 2, 0).numpy()
                _write(folder, f"{x}_{y}", rows, classes[number], copy, number, rng)
        with open(folder / TRUTH, "w", newline="") as handle:
            csv.writer(handle).writerows([("id", "source", "source_file"), *rows])
        folders[name] = folder
    return folders
