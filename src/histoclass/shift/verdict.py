"""The batch verdict: whether a set of images, as a whole, is unlike the training data (no labels needed)."""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_IMAGES", "shift_verdict", "unlike_share"]

#: Fewer scored images than this say too little about a source to warn about it.
MIN_IMAGES = 10


def unlike_share(unlike: np.ndarray) -> float:
    """Share of images flagged as unlike the training data."""
    return float(np.mean(unlike)) if len(unlike) else 0.0


def shift_verdict(unlike: np.ndarray, quantile: float, model: str) -> str | None:
    """One warning line when far more images are flagged than same-source images would be, else None.

    Same-source images exceed the threshold ``1 - quantile`` of the time (5% by default); a warning
    needs three times that share and at least a fifth of the batch, so a few odd images in a
    same-lab batch stay quiet.
    """
    share, expected = unlike_share(unlike), 1.0 - quantile
    if len(unlike) < MIN_IMAGES or share < max(3 * expected, 0.2):
        return None
    return (
        f"{share:.0%} of these {len(unlike)} images are unlike the training data (same-source images: "
        f"{expected:.0%}): expect lower accuracy; adapt the model to them with "
        f"histoclass adapt {model} --data THESE_IMAGES (no labels needed), or --shots K with a few "
        "labelled ones"
    )
