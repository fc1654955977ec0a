"""Geometric verification: two images are copies when many local features match under one affine map.

Embeddings find candidates; a copy is then confirmed by ORB keypoints matched between the two images (and
between one and the other's mirror image, since copies are often flipped), with RANSAC fitting an affine
transform. Rotated, shifted, sheared, zoomed and recoloured copies share dozens of inliers; different images
of the same kind of cell share a handful. Runs on OpenCV, which releases the GIL, so threads run in parallel.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from histoclass.data.records import ImageRecords
from histoclass.errors import HistoclassError

__all__ = ["KeypointCache", "count_inliers", "verify_pairs"]

#: Side of the square image keypoints are found on (half the blood-cell images' width: enough detail, 4x faster).
KEYPOINT_SIZE = 160


def _cv2():
    try:
        import cv2
    except ImportError:
        raise HistoclassError("the near-duplicate audit needs OpenCV: pip install opencv-python-headless") from None
    cv2.setNumThreads(1)
    return cv2


@dataclass
class Keypoints:
    """Keypoint positions and ORB descriptors of an image and of its mirror image."""

    points: tuple[np.ndarray, np.ndarray]
    descriptors: tuple[np.ndarray | None, np.ndarray | None]


class KeypointCache:
    """Keypoints of ``records``, computed on first use (thread-safe) and kept for the audit's lifetime."""

    def __init__(self, records: ImageRecords, size: int = KEYPOINT_SIZE) -> None:
        self.records, self.size = records, size
        self._found: dict[int, Keypoints | None] = {}
        self._lock = threading.Lock()
        cv2 = _cv2()
        self._local = threading.local()
        self._factory = lambda: (
            cv2.ORB_create(nfeatures=400, fastThreshold=5, edgeThreshold=15, patchSize=15),
            cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)),
        )

    def __getitem__(self, i: int) -> Keypoints | None:
        with self._lock:
            if i in self._found:
                return self._found[i]
        found = self._detect(i)
        with self._lock:
            self._found[i] = found
        return found

    def _detect(self, i: int) -> Keypoints | None:
        cv2 = _cv2()
        if not hasattr(self._local, "tools"):
            self._local.tools = self._factory()
        orb, clahe = self._local.tools
        try:
            gray = clahe.apply(cv2.cvtColor(self.records.load(i, self.size), cv2.COLOR_RGB2GRAY))
        except Exception:  # an unreadable image has no keypoints; it is reported by the embedding step
            return None
        points, descriptors = [], []
        for view in (gray, np.ascontiguousarray(gray[:, ::-1])):
            found, described = orb.detectAndCompute(view, None)
            points.append(np.float32([k.pt for k in found]).reshape(-1, 2))
            descriptors.append(described)
        return Keypoints((points[0], points[1]), (descriptors[0], descriptors[1]))


def _matched_inliers(cv2, points_a, desc_a, points_b, desc_b, min_inliers: int) -> int:
    if desc_a is None or desc_b is None or len(desc_a) < 4 or len(desc_b) < 4:
        return 0
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    good = [m for m, *rest in matcher.knnMatch(desc_a, desc_b, k=2) if rest and m.distance < 0.8 * rest[0].distance]
    if len(good) < min_inliers:
        return len(good)  # fewer ratio-test matches than inliers needed: RANSAC cannot change the verdict
    source = points_a[[m.queryIdx for m in good]]
    target = points_b[[m.trainIdx for m in good]]
    _, mask = cv2.estimateAffine2D(source, target, ransacReprojThreshold=2.0, maxIters=500)
    return int(mask.sum()) if mask is not None else 0


def count_inliers(a: Keypoints | None, b: Keypoints | None, min_inliers: int = 20) -> int:
    """Affine-consistent matches between ``a`` and ``b`` or ``b``'s mirror image, whichever has more."""
    if a is None or b is None:
        return 0
    cv2 = _cv2()
    return max(
        _matched_inliers(cv2, a.points[0], a.descriptors[0], b.points[view], b.descriptors[view], min_inliers)
        for view in (0, 1)
    )


def verify_pairs(
    left: KeypointCache,
    right: KeypointCache,
    pairs: list[tuple[int, int]],
    min_inliers: int,
    threads: int | None = None,
) -> list[bool]:
    """Whether each (left index, right index) pair is a copy (at least ``min_inliers`` inliers)."""

    def check(pair: tuple[int, int]) -> bool:
        return count_inliers(left[pair[0]], right[pair[1]], min_inliers) >= min_inliers

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        return list(pool.map(check, pairs))
