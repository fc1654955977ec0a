"""Stain normalisation: torchstain's normalisers stored as numbers, and applied by every path of a
trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import histoclass
from conftest import BLOOD, small_config
from histoclass.config import build_config
from histoclass.data.images import load_resized
from histoclass.data.stain import hed_jitter
from histoclass.data.stain_normalize import StainNormalization
from histoclass.errors import HistoclassError

SIZE = 96


@pytest.fixture(scope="module")
def target() -> np.ndarray:
    return load_resized(sorted((BLOOD / "EOSINOPHIL").iterdir())[0], SIZE)


@pytest.fixture(scope="module")
def restained() -> np.ndarray:
    """Real cells of another class given another stain: haematoxylin x 1.3, eosin x 0.7 (as another lab's)."""
    images = np.stack([load_resized(p, SIZE) for p in sorted((BLOOD / "LYMPHOCYTE").iterdir())[:8]])
    scaled = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255
    jittered = hed_jitter(scaled, torch.tensor([[1.3, 0.7, 1.0]]).expand(8, 3), torch.zeros(8, 3))
    return (jittered.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def _lab_stats(images: np.ndarray) -> np.ndarray:
    from torchstain.numpy.utils.rgb2lab import rgb2lab

    lab = rgb2lab(images.astype(np.float32) / 255).reshape(len(images), -1, 3)
    return np.concatenate([lab.mean(axis=1), lab.std(axis=1)], axis=1)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_the_stored_normaliser_is_torchstains_own(
    method: str, target: np.ndarray, restained: np.ndarray
) -> None:
    """Through JSON and back, the record normalises exactly as torchstain's own fitted normaliser does."""
    stored = StainNormalization.model_validate_json(
        StainNormalization.fit(method, target).model_dump_json()
    )
    import torchstain

    normalizers = torchstain.normalizers
    reference = (
        normalizers.MacenkoNormalizer if method == "macenko" else normalizers.ReinhardNormalizer
    )("numpy")
    reference.fit(target)
    for image, ours in zip(restained, stored.apply(restained), strict=True):
        expected = (
            reference.normalize(image, stains=False)[0]
            if method == "macenko"
            else reference.normalize(image)
        )
        assert np.array_equal(ours, expected)


def test_reinhard_brings_lab_statistics_to_the_target(
    target: np.ndarray, restained: np.ndarray
) -> None:
    normalized = StainNormalization.fit("reinhard", target).apply(restained)
    goal = _lab_stats(target[None])[0]
    before = np.abs(_lab_stats(restained) - goal).mean()
    after = np.abs(_lab_stats(normalized) - goal).mean()
    assert after < before / 3, (before, after)


def _angles(vectors: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Degrees between each stain vector (columns) and the goal's."""
    cosine = (
        (vectors * goal).sum(0) / np.linalg.norm(vectors, axis=0) / np.linalg.norm(goal, axis=0)
    )
    return np.degrees(np.arccos(np.clip(cosine, -1, 1)))


def test_macenko_brings_the_stain_vectors_to_the_target(target: np.ndarray) -> None:
    """A two-stain image (Macenko's model) rendered from a real cell's concentrations with other
    stain vectors: after normalisation its estimated vectors are the target's."""
    goal = np.array(StainNormalization.fit("macenko", target).reference)
    cell = (
        load_resized(sorted((BLOOD / "LYMPHOCYTE").iterdir())[0], SIZE).reshape(-1, 3).astype(float)
    )
    concentrations = np.linalg.lstsq(goal, -np.log((cell.T + 1) / 240), rcond=None)[0].clip(0)
    other = goal * np.array([[1.0, 1.3], [0.6, 1.0], [1.3, 0.7]])
    other /= np.linalg.norm(other, axis=0)
    image = (
        (240 * np.exp(-other @ concentrations))
        .T.reshape(SIZE, SIZE, 3)
        .clip(0, 255)
        .astype(np.uint8)
    )
    normalized = StainNormalization.fit("macenko", target).apply(image[None])[0]
    before = _angles(np.array(StainNormalization.fit("macenko", image).reference), goal)
    after = _angles(np.array(StainNormalization.fit("macenko", normalized).reference), goal)
    assert before.min() > 10 and after.max() < 2, (before, after)


def test_images_without_stain_pass_unchanged_and_a_flat_target_is_refused() -> None:
    blank = np.full((2, 32, 32, 3), 250, np.uint8)
    cell = load_resized(sorted((BLOOD / "MONOCYTE").iterdir())[0], 32)
    for method in ("macenko", "reinhard"):
        assert np.array_equal(StainNormalization.fit(method, cell).apply(blank), blank)
        with pytest.raises(ValueError, match="too little stain"):
            StainNormalization.fit(method, blank[0])


def test_a_normalised_run_applies_it_in_prediction_and_its_onnx_export(
    blood_subset: Path, tmp_path: Path
) -> None:
    from histoclass.config import ExportConfig
    from histoclass.export.job import export
    from histoclass.training.job import train

    target_file = sorted((BLOOD / "EOSINOPHIL").iterdir())[0]
    values = small_config(blood_subset, tmp_path, "stain", epochs=2)
    values["data"] |= {
        "image_size": 32,
        "cache": "ram",
        "stain_normalize": "macenko",
        "stain_target": str(target_file),
    }
    unreadable = {
        **values,
        "data": values["data"] | {"stain_target": str(BLOOD.parent / "README.md")},
    }
    with pytest.raises(HistoclassError, match="--stain-target: cannot read"):
        train(build_config(unreadable))
    assert not (tmp_path / "stain").exists()  # reported before a run directory is made
    run = train(build_config(values))
    info = json.loads((run / "model.json").read_text())
    assert info["stain"]["method"] == "macenko"
    files = sorted((BLOOD / "MONOCYTE").iterdir())[:16]
    pixels = np.stack([load_resized(f, 32) for f in files])
    predictor = histoclass.load(run)
    stain = StainNormalization.fit("macenko", load_resized(target_file, 32))
    assert stain == predictor.info.stain
    assert np.allclose(
        predictor.view_logits(pixels)[:, 0], predictor.engine.logits(stain.apply(pixels)), atol=1e-5
    )
    assert not np.allclose(
        predictor.view_logits(pixels)[:, 0], predictor.engine.logits(pixels), atol=1e-3
    )

    onnx = export(ExportConfig(run=str(run), format="onnx", images=64))
    assert json.loads((onnx.parent / "preprocess.json").read_text())["stain"] == info["stain"]
    exported = histoclass.load(onnx)
    assert np.abs(exported.predict(files) - predictor.predict(files)).max() < 1e-3
