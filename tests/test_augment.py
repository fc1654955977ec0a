"""The batched device augmentation draws from the same distributions as torchvision's per-image transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare, ks_2samp

from conftest import BLOOD
from histoclass.config import AugmentConfig
from histoclass.data.device_transforms import BatchAugment, hashed_uniforms
from histoclass.data.images import open_rgb, resize_square
from histoclass.data.stain import hed_jitter, hed_to_rgb, rgb_to_hed
from histoclass.data.transforms import create_train_transform

SIZE, N = 64, 2000
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(scope="module")
def cell() -> torch.Tensor:
    """One real blood-cell image, float CxHxW in [0, 1] (asymmetric, so geometry shows in its statistics)."""
    path = sorted((BLOOD / "EOSINOPHIL").iterdir())[0]
    return (
        torch.from_numpy(resize_square(open_rgb(path, SIZE), SIZE)).permute(2, 0, 1).float() / 255
    )


#: Summaries of the reference samples by config: a preset's reference is drawn once for every test.
_REFERENCES: dict[str, dict[str, np.ndarray]] = {}


def reference(augment: AugmentConfig, image: torch.Tensor) -> dict[str, np.ndarray]:
    """``summaries`` of N per-image torchvision augmentations (seed 0): the CPU path's definition."""
    key = augment.model_dump_json()
    if key not in _REFERENCES:
        transform = create_train_transform(augment, SIZE)
        torch.manual_seed(0)
        _REFERENCES[key] = summaries(torch.stack([transform(image) for _ in range(N)]))
    return _REFERENCES[key]


def batched(
    augment: AugmentConfig, image: torch.Tensor, device: str, seed: int = 1
) -> torch.Tensor:
    images = image.to(device).expand(N, -1, -1, -1).contiguous()
    out = BatchAugment(augment, seed)(images, torch.arange(N, device=device), epoch=0, step=0)
    return out.cpu()


def summaries(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image statistics that move with colour (channel means, spread) and geometry (centroid,
    quadrant)."""
    luma = images.mean(1)
    mass = luma.sum((1, 2)).clamp(min=1e-6)
    coords = torch.arange(SIZE, dtype=torch.float32)
    x = ((luma * coords).sum((1, 2)) / mass)[:, None, None]
    y = ((luma * coords[:, None]).sum((1, 2)) / mass)[:, None, None]
    dx, dy = coords[None, None, :] - x, coords[None, :, None] - y
    xy, xx, yy = ((luma * m).sum((1, 2)) for m in (dx * dy, dx * dx, dy * dy))
    return {
        "red": images[:, 0].mean((1, 2)).numpy(),
        "green": images[:, 1].mean((1, 2)).numpy(),
        "blue": images[:, 2].mean((1, 2)).numpy(),
        "spread": images.std((1, 2, 3)).numpy(),
        "centroid_x": x.flatten().numpy(),
        "centroid_y": y.flatten().numpy(),
        "orientation": (0.5 * torch.atan2(2 * xy, xx - yy)).numpy(),
        "top_left": images[:, :, : SIZE // 2, : SIZE // 2].mean((1, 2, 3)).numpy(),
        "dark_share": (images.sum(1) < 0.01).float().mean((1, 2)).numpy(),
    }


def worst_distance(expected: dict[str, np.ndarray], sample: torch.Tensor) -> tuple[str, float]:
    """The statistic on which a reference's summaries and a sample of augmentations differ most
    (two-sample KS distance)."""
    other = summaries(sample)
    return max(
        ((k, float(ks_2samp(expected[k], other[k]).statistic)) for k in expected),
        key=lambda kv: kv[1],
    )


# Two samples of N from one distribution differ by KS ~0.03 (0.06 at p=0.001); a changed range lands
# far beyond.
LIMIT = 0.06


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", ["keras", "histology", "tfdata", "robust", "stain+erasing"])
def test_batched_augmentation_matches_torchvision(
    cell: torch.Tensor, preset: str, device: str
) -> None:
    augment = (
        AugmentConfig(preset="none", stain=0.1, erasing=0.5)
        if preset == "stain+erasing"
        else AugmentConfig(preset=preset)
    )
    name, distance = worst_distance(reference(augment, cell), batched(augment, cell, device))
    assert distance < LIMIT, f"{preset} on {device}: '{name}' differs (KS {distance:.3f})"


def test_the_comparison_detects_a_different_range(cell: torch.Tensor) -> None:
    """Control: a wider zoom range (0.3 for 0.2), an added brightness jitter, a stronger stain jitter or more
    erasing is told apart by the same test."""
    for base, changed in (
        ({"preset": "keras"}, {"zoom": 0.3}),
        ({"preset": "keras"}, {"brightness": 0.2}),
        ({"preset": "none", "stain": 0.05}, {"stain": 0.15}),
        ({"preset": "none", "erasing": 0.3}, {"erasing": 0.6}),
    ):
        name, distance = worst_distance(
            reference(AugmentConfig(**base), cell),
            batched(AugmentConfig(**base | changed), cell, "cpu"),
        )
        assert distance > 2 * LIMIT, f"{changed} not detected (worst '{name}', KS {distance:.3f})"


@pytest.mark.parametrize("device", DEVICES)
def test_flips_and_quarter_turns_are_exact_and_uniform(cell: torch.Tensor, device: str) -> None:
    """Flips and 90-degree turns move pixels without interpolation, and each of the 8 results is
    equally likely."""
    out = batched(AugmentConfig(preset="none", hflip=True, vflip=True, rot90=True), cell, device)
    views = torch.stack(
        [v for k in range(4) for v in (cell.rot90(k, (1, 2)), cell.rot90(k, (1, 2)).flip(2))]
    )
    error = ((out[:, None] - views[None]) ** 2).mean((2, 3, 4))
    assert float(error.min(1).values.max()) < 1e-10
    counts = np.bincount(error.argmin(1).numpy(), minlength=8)
    assert chisquare(counts).pvalue > 1e-3, counts


def test_parameters_depend_only_on_seed_epoch_and_index() -> None:
    """Same image, epoch and seed -> same draw, whatever the batch; another epoch or seed -> other draws."""
    index = torch.arange(1000)
    draws = hashed_uniforms(7, 3, index, 4)
    assert torch.equal(hashed_uniforms(7, 3, index.flip(0), 4), draws.flip(0))
    assert not torch.equal(hashed_uniforms(7, 4, index, 4), draws)
    assert not torch.equal(hashed_uniforms(8, 3, index, 4), draws)
    assert (
        abs(float(draws.mean()) - 0.5) < 0.02 and float(draws.min()) >= 0 and float(draws.max()) < 1
    )


def test_stain_deconvolution_and_jitter_match_skimage(cell: torch.Tensor) -> None:
    from skimage.color import hed2rgb, rgb2hed

    image = cell[None].double()
    as_hwc = lambda t: t[0].permute(1, 2, 0).numpy()  # noqa: E731
    stains = rgb2hed(as_hwc(image))
    # skimage clips at zero
    assert np.allclose(np.maximum(as_hwc(rgb_to_hed(image)), 0), stains, atol=1e-9)
    assert np.allclose(
        as_hwc(hed_to_rgb(torch.from_numpy(stains).permute(2, 0, 1)[None])),
        hed2rgb(stains),
        atol=1e-9,
    )
    # Tellez et al.: haematoxylin x1.3 and eosin +0.02, DAB kept; skimage's deconvolution of the result agrees
    jittered = hed_jitter(image, torch.tensor([[1.3, 1.0, 1.0]]), torch.tensor([[0.0, 0.02, 0.0]]))
    # pixels where neither the floor nor the clip was hit
    unclipped = ((image > 1e-6) & (image < 1)).all(dim=1)[0].numpy()
    unclipped &= ((jittered > 1e-6) & (jittered < 1)).all(dim=1)[0].numpy()
    expected = np.maximum(as_hwc(rgb_to_hed(image)) * [1.3, 1.0, 1.0] + [0.0, 0.02, 0.0], 0)
    assert unclipped.mean() > 0.5
    assert np.allclose(rgb2hed(as_hwc(jittered))[unclipped], expected[unclipped], atol=1e-9)
