"""The one preprocessing path: numpy and torch forms agree on real images; the test-time views are exact."""

from __future__ import annotations

import numpy as np
import torch

from conftest import BLOOD_TEST
from histoclass.data.images import load_resized
from histoclass.inference.preprocess import dihedral_views, normalize_numpy, normalize_torch


def real_pixels(count: int = 16, size: int = 96) -> np.ndarray:
    return np.stack([load_resized(p, size) for p in sorted(BLOOD_TEST.rglob("*.jpeg"))[:count]])


def test_numpy_and_torch_normalisation_agree_on_real_images() -> None:
    pixels = real_pixels()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    in_numpy = normalize_numpy(pixels, mean, std)
    in_torch = normalize_torch(
        torch.from_numpy(pixels).permute(0, 3, 1, 2),
        torch.tensor(mean).view(1, 3, 1, 1),
        torch.tensor(std).view(1, 3, 1, 1),
    )
    assert in_numpy.shape == (16, 3, 96, 96) and in_numpy.dtype == np.float32
    assert np.abs(in_numpy - in_torch.numpy()).max() < 1e-6
    assert np.array_equal(
        normalize_numpy(pixels, mean, std, "NHWC"), in_numpy.transpose(0, 2, 3, 1)
    )
    assert (
        abs(float(in_numpy[:, 0].mean()) - ((pixels[..., 0].mean() / 255 - mean[0]) / std[0]))
        < 1e-4
    )


def test_dihedral_views_are_the_eight_symmetries_identity_first() -> None:
    pixels = real_pixels(4)
    views = dihedral_views(pixels)
    assert len(views) == 8 and np.array_equal(views[0], pixels)
    as_torch = torch.from_numpy(pixels)
    expected = [torch.rot90(as_torch, k, (1, 2)) for k in range(4)]
    expected = [v for turned in expected for v in (turned, turned.flip(2))]
    for view, reference in zip(views, expected, strict=True):
        assert np.array_equal(view, reference.numpy())
    assert len({view.tobytes() for view in views}) == 8
