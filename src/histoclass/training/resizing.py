"""Progressive resizing (fastai's trick): the first epochs train on smaller images, which cost a fraction
of the full size's step, and the last third at the full size, so the model ends on what it will see.

Validation, checkpoints, calibration and every later use stay at the full size: only the training batches
shrink (after decoding, before augmentation), so the decoded cache and the run directory are unchanged.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

__all__ = ["describe_sides", "epoch_sides", "resized"]


def epoch_sides(start: int, target: int, epochs: int) -> list[int]:
    """Each epoch's training side: the first third at ``start``, the second halfway (a multiple of 8),
    the rest (the most epochs) at ``target``."""
    middle = max(start, min(target, round((start + target) / 16) * 8))
    third = epochs // 3
    return [start] * third + [middle] * third + [target] * (epochs - 2 * third)


def describe_sides(sides: list[int]) -> str:
    """``epochs 1-3 at 64 px, epochs 4-6 at 96 px, epochs 7-10 at 128 px``: said at the start of a run."""
    spans, first = [], 1
    for side, run in itertools.groupby(sides):
        last = first + len(list(run)) - 1
        spans.append(
            f"epochs {first}-{last} at {side} px" if last > first else f"epoch {first} at {side} px"
        )
        first = last + 1
    return ", ".join(spans)


def resized(images: torch.Tensor, side: int) -> torch.Tensor:
    """A float NCHW batch at ``side`` x ``side`` (antialiased, as the decoder's own downscaling is)."""
    if images.shape[-1] == side and images.shape[-2] == side:
        return images
    return F.interpolate(
        images, size=(side, side), mode="bilinear", antialias=True, align_corners=False
    )
