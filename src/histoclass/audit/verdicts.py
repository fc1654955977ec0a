"""Verified pairs kept between audits: ``$HISTOCLASS_CACHE/audits/pairs-v<version>-<min inliers>.npz``.

Whether two images are copies depends only on the two files' content (their identities) and on how copies are
verified, and the verification is most of an audit's time. So an audit of data that grew, of a subset, or of
the same images linked into other folders (train/val folders of symlinks) verifies only the pairs it has not
seen. Written atomically: two audits saving at once may lose each other's new verdicts, never corrupt them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from histoclass.atomic import atomic_path

__all__ = ["PairVerdicts"]

#: Characters of each image key kept in a pair's name (80 bits each: no collision among millions of images).
_KEY = 20


class PairVerdicts:
    """Copy or not, for every pair verified so far, by the two images' keys (left first)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.known = self._load()
        self.added = 0

    def _load(self) -> dict[str, bool]:
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path) as saved:
                return dict(zip(saved["pairs"].tolist(), saved["copy"].tolist(), strict=True))
        except (OSError, ValueError, KeyError):
            return {}  # a cache that cannot be read is built again

    def verify(
        self,
        keys: tuple[list[str], list[str]],
        pairs: list[tuple[int, int]],
        check: Callable[[list[tuple[int, int]]], list[bool]],
    ) -> list[bool]:
        """Verdicts for ``pairs`` (indices into the two key lists): known ones read, the others
        ``check``ed."""
        names = [keys[0][a][:_KEY] + keys[1][b][:_KEY] for a, b in pairs]
        todo = [i for i, name in enumerate(names) if name not in self.known]
        if todo:
            found = check([pairs[i] for i in todo])
            self.known.update(zip((names[i] for i in todo), found, strict=True))
            self.added += len(todo)
        return [self.known[name] for name in names]

    def save(self) -> None:
        """Keep what this audit verified for the next one."""
        if not self.added:
            return
        pairs = np.array(list(self.known), dtype=f"U{2 * _KEY}")
        copy = np.fromiter(self.known.values(), dtype=bool, count=len(self.known))
        with atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, pairs=pairs, copy=copy)
        self.added = 0
