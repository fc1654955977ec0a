"""Geometric verification: two images are copies when local features match under one affine map, and their
pixels agree once one is laid onto the other by it.

Embeddings find candidates; a copy is then confirmed by ORB keypoints matched between the two images (and
between one and the other's mirror image, since copies are often flipped), with RANSAC fitting an affine
transform a copy can have gone through (zoom 1/2-2, little shear). The second image is then warped onto the
first and their structure compared where both have pixels: tiles cut with a partial overlap share only a few
keypoints, but their shared region correlates as well as a whole copy does, while look-alikes (other cells of
one kind, glass whose JPEG blocks line up) do not. Runs on OpenCV, which releases the GIL, so threads run in
parallel.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from histoclass.data.records import ImageRecords
from histoclass.errors import HistoclassError

__all__ = ["KeypointCache", "Match", "match", "verify_pairs"]

#: Side of the square image keypoints are found on (half the blood-cell images' width: enough
#: detail, 4x faster), and how many: 800 find tiles sharing a quarter of their area (overlapping
#: slide tiles, ARI 0.97; 400: 0.92).
KEYPOINT_SIZE, KEYPOINTS = 160, 800
#: What the pixels must show once aligned: the share of the image both cover and their correlation there.
MIN_OVERLAP, MIN_CORRELATION = 0.1, 0.5
#: Grey levels at or below this are the black fill a rotated or shifted copy gets, not image.
FILL = 8


def _cv2():
    try:
        import cv2
    except ImportError:
        raise HistoclassError(
            "the near-duplicate audit needs OpenCV: pip install opencv-python-headless"
        ) from None
    cv2.setNumThreads(1)
    return cv2


@dataclass
class Keypoints:
    """Keypoint positions and ORB descriptors of an image and of its mirror image, and the image
    itself in grey at half the keypoints' scale, for the pixel check."""

    points: tuple[np.ndarray, np.ndarray]
    descriptors: tuple[np.ndarray | None, np.ndarray | None]
    grey: np.ndarray


@dataclass(frozen=True)
class Match:
    """How well two images match: affine-consistent keypoints, and after aligning one onto the other by that
    affine map, the share of the image both cover and their pixels' correlation there."""

    inliers: int
    overlap: float = 0.0
    correlation: float = -1.0

    def is_copy(self, min_inliers: int) -> bool:
        return (
            self.inliers >= min_inliers
            and self.overlap >= MIN_OVERLAP
            and self.correlation >= MIN_CORRELATION
        )


class KeypointCache:
    """Keypoints of ``records``, computed on first use (thread-safe) and kept for the audit's lifetime."""

    def __init__(self, records: ImageRecords, size: int = KEYPOINT_SIZE) -> None:
        self.records, self.size = records, size
        self._found: dict[int, Keypoints | None] = {}
        self._lock = threading.Lock()
        cv2 = _cv2()
        self._local = threading.local()
        self._factory = lambda: (
            cv2.ORB_create(nfeatures=KEYPOINTS, fastThreshold=5, edgeThreshold=15, patchSize=15),
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
            grey = cv2.cvtColor(self.records.load(i, self.size), cv2.COLOR_RGB2GRAY)
        except Exception:
            # an unreadable image has no keypoints; it is reported by the embedding step
            return None
        equalised = clahe.apply(grey)
        points, descriptors = [], []
        for view in (equalised, np.ascontiguousarray(equalised[:, ::-1])):
            found, described = orb.detectAndCompute(view, None)
            points.append(np.float32([k.pt for k in found]).reshape(-1, 2))
            descriptors.append(described)
        small = cv2.resize(grey, (self.size // 2, self.size // 2), interpolation=cv2.INTER_AREA)
        return Keypoints((points[0], points[1]), (descriptors[0], descriptors[1]), small)


def _affine(
    cv2, points_a, desc_a, points_b, desc_b, min_inliers: int
) -> tuple[int, np.ndarray | None]:
    """Inliers of the affine map from ``a``'s keypoints to ``b``'s, and the map."""
    if desc_a is None or desc_b is None or len(desc_a) < 4 or len(desc_b) < 4:
        return 0, None
    # each keypoint's two nearest in b as arrays: a matcher's DMatch objects cost as much to build as
    # the distances, and hold the GIL while they are built
    distances, nearest = cv2.batchDistance(
        desc_a, desc_b, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2, update=0, crosscheck=False
    )
    good = np.flatnonzero(distances[:, 0] < 0.8 * distances[:, 1])
    if len(good) < max(min_inliers, 3):
        # fewer ratio-test matches than inliers needed (or than an affine map)
        return len(good), None
    source, target = points_a[good], points_b[nearest[good, 0]]
    affine, mask = cv2.estimateAffine2D(source, target, ransacReprojThreshold=2.0, maxIters=500)
    return (int(mask.sum()), affine) if mask is not None else (0, None)


def _band(cv2, grey: np.ndarray) -> np.ndarray:
    """Structure without the light: a difference of Gaussians (sigma 1 and 4), so even glass, shading and the
    overall brightness weigh nothing and only edges, nuclei and fibres are compared."""
    image = grey.astype(np.float32)
    return cv2.GaussianBlur(image, (0, 0), 1.0) - cv2.GaussianBlur(image, (0, 0), 4.0)


def _plausible(affine: np.ndarray) -> bool:
    """A map a copy can have gone through: zoom between 1/2 and 2, little shear (degenerate fits on a handful
    of matches are not)."""
    spread = np.linalg.svd(affine[:, :2], compute_uv=False)
    return bool(spread[1] >= 0.5 and spread[0] <= 2.0 and spread[0] <= 1.5 * spread[1])


def _aligned(
    cv2, grey_a: np.ndarray, grey_b: np.ndarray, affine: np.ndarray
) -> tuple[float, float]:
    """Overlap share and pixel correlation of ``a`` and ``b`` warped onto it (``affine`` maps a's
    keypoint coordinates, at twice the grey images' scale, to b's). Black fill (rotated copies'
    corners) is left out."""
    scaled = affine.astype(np.float64).copy()
    scaled[:, 2] /= 2
    side = grey_a.shape[::-1]
    warped = cv2.warpAffine(
        grey_b, scaled, side, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0
    )
    inside = cv2.warpAffine(
        np.ones_like(grey_b), scaled, side, flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    )
    valid = (inside > 0) & (grey_a > FILL) & (warped > FILL)
    overlap = float(valid.mean())
    if valid.sum() < 16:
        return overlap, -1.0
    a, b = _band(cv2, grey_a)[valid], _band(cv2, warped)[valid]
    a, b = a - a.mean(), b - b.mean()
    return overlap, float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-9))


def match(a: Keypoints | None, b: Keypoints | None, min_inliers: int) -> Match:
    """``a`` against ``b``, then (unless that was a copy) against ``b``'s mirror image: the first
    copy found, else the closer match. The pixels are compared only under a plausible map with
    ``min_inliers`` inliers."""
    if a is None or b is None:
        return Match(0)
    cv2 = _cv2()
    best = Match(0)
    for view in (0, 1):
        inliers, affine = _affine(
            cv2, a.points[0], a.descriptors[0], b.points[view], b.descriptors[view], min_inliers
        )
        found = Match(inliers)
        if affine is not None and inliers >= min_inliers and _plausible(affine):
            grey_b = b.grey if view == 0 else np.ascontiguousarray(b.grey[:, ::-1])
            found = Match(inliers, *_aligned(cv2, a.grey, grey_b, affine))
            if found.is_copy(min_inliers):
                return found
        best = max(best, found, key=lambda m: (m.correlation, m.inliers))
    return best


def verify_pairs(
    left: KeypointCache,
    right: KeypointCache,
    pairs: list[tuple[int, int]],
    min_inliers: int,
    threads: int | None = None,
) -> list[bool]:
    """Whether each (left index, right index) pair is a copy."""

    def check(pair: tuple[int, int]) -> bool:
        return match(left[pair[0]], right[pair[1]], min_inliers).is_copy(min_inliers)

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        return list(pool.map(check, pairs))
