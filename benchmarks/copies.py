"""Synthetic copies with a known source: what a near-duplicate audit must recover.

Each source image is copied 8-20 times with the seed projects' augmentations (rotation ±20°, shift ±10%,
shear, zoom, flips, brightness/contrast/saturation) and saved under a shuffled name in its class folder.
``truth.csv`` beside the class folders maps every copy to its source.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

__all__ = ["TRUTH", "copy_augmentation", "make_copies", "read_truth"]

TRUTH = "truth.csv"


def copy_augmentation() -> v2.Compose:
    """The transforms a copy goes through (Keras ImageDataGenerator-like, as the seed notebooks used)."""
    return v2.Compose(
        [
            v2.RandomAffine(degrees=20, translate=(0.1, 0.1), shear=11.5, scale=(0.8, 1.2)),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.02),
        ]
    )


def make_copies(
    sources: list[Path],
    out: Path,
    seed: int = 0,
    fewest: int = 8,
    most: int = 20,
    per_class: int | None = None,
) -> Path:
    """Write copies of each source into ``out/<class>/`` (class = the source's folder name) and ``truth.csv``.

    ``per_class``: instead of 8-20 copies a source, about this many copies per class, shared evenly among its
    sources (as the blood-cell TEST split balances its classes: few monocytes, many copies of each).
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    augment = copy_augmentation()
    in_class = {
        name: sum(s.parent.name == name for s in sources)
        for name in {s.parent.name for s in sources}
    }
    rows = []
    for number, source in enumerate(sources):
        image = v2.functional.pil_to_tensor(Image.open(source).convert("RGB"))
        folder = out / source.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        count = (
            round(per_class / in_class[source.parent.name])
            if per_class
            else int(rng.integers(fewest, most + 1))
        )
        for _ in range(count):
            name = f"{rng.integers(10**9):09d}.jpeg"
            v2.functional.to_pil_image(augment(image)).save(folder / name, quality=92)
            rows.append((f"{source.parent.name}/{name}", number, source.name))
    with open(out / TRUTH, "w", newline="") as handle:
        csv.writer(handle).writerows([("id", "source", "source_file"), *rows])
    return out


def read_truth(folder: Path) -> dict[str, int]:
    """Copy id -> source number."""
    with open(folder / TRUTH, newline="") as handle:
        return {row["id"]: int(row["source"]) for row in csv.DictReader(handle)}
