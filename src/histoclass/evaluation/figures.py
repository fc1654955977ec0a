"""Matplotlib set up for files only (no display), and atomic PNG saving shared by every plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from histoclass.atomic import atomic_path

__all__ = ["plt", "save_figure"]


def save_figure(figure: plt.Figure, out: str | Path) -> Path:
    """Save ``figure`` as PNG atomically and release it."""
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return Path(out)
