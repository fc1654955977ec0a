"""Cell framing: the square around each image's cell, found the same in a wide field and a tight crop, and
carried by a run into every later use (predict, serve's decoding, embed); slides refuse it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BLOOD_TEST, SLIDE, TECOM, probe, run_cli
from histoclass.data.framing import frame
from histoclass.data.images import load_resized, resize_square
from histoclass.deploy import open_predictor
from histoclass.runs import ModelInfo
from histoclass.serving.uploads import decode_resized

SIZE = 64


def _cells(count: int) -> list[Path]:
    """Real cells of both labs: the other lab's tight crops and the training lab's wide fields."""
    tecom = sorted(TECOM.glob("*/*.bmp"))[::40]
    blood = sorted(BLOOD_TEST.glob("*/*.jpeg"))[::10]
    return (tecom + blood)[:count]


def _widened(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``image`` in a field twice as wide and high, at a random place on the background's colour."""
    pixels = np.asarray(image)
    background = tuple(int(v) for v in np.percentile(pixels.reshape(-1, 3), 90, axis=0))
    wide = Image.new("RGB", (image.width * 2, image.height * 2), background)
    wide.paste(image, (int(rng.integers(0, image.width)), int(rng.integers(0, image.height))))
    return wide


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def test_a_cell_is_framed_alike_in_a_tight_crop_and_a_wide_field(rng) -> None:
    framed, whole = [], []
    for path in _cells(12):
        image = Image.open(path).convert("RGB")
        wide = _widened(image, rng)
        framed.append(
            _difference(resize_square(image, SIZE, "cell"), resize_square(wide, SIZE, "cell"))
        )
        whole.append(_difference(resize_square(image, SIZE), resize_square(wide, SIZE)))
    # the cell at the same place and scale: a few grey levels apart, where the whole fields differ by tens
    assert np.median(framed) < 8, framed
    assert np.median(framed) < np.median(whole) / 3, (framed, whole)


def test_field_framing_leaves_the_image_as_it_is() -> None:
    image = Image.open(_cells(1)[0]).convert("RGB")
    assert frame(image, "field") is image


@pytest.fixture(scope="module")
def framed_probe(blood_subset: Path, runs_dir: Path) -> Path:
    """A linear probe on the shared subset, seeing a square around each image's cell."""
    return probe(blood_subset, runs_dir, "probe-cell", "linear", framing="cell")


def test_a_framed_run_frames_every_later_use(framed_probe: Path) -> None:
    info = ModelInfo.load(framed_probe / "model.json")
    assert info.framing == "cell"
    predictor = open_predictor(framed_probe, "torch")
    paths = sorted(BLOOD_TEST.glob("*/*.jpeg"))
    size = info.image_size
    framed = np.stack([load_resized(path, size, "cell") for path in paths])
    expected = predictor.predict_pixels(framed)
    assert np.allclose(predictor.predict(paths), expected, atol=1e-5)
    decoded = [decode_resized(p.name, p.read_bytes(), size, info.framing) for p in paths[:4]]
    assert np.array_equal(np.stack(decoded), framed[:4])
    whole = predictor.predict_pixels(np.stack([load_resized(path, size) for path in paths]))
    assert not np.allclose(whole, expected, atol=1e-3), "the framing must change what it sees"
    labels = np.array([info.labels.index(path.parent.name) for path in paths])
    assert (expected.argmax(1) == labels).mean() > 0.4  # unseen cells, 4 classes: chance is 0.25


def test_slides_refuse_a_cell_framed_run(framed_probe: Path, tmp_path: Path) -> None:
    result = run_cli("slide", str(framed_probe), str(SLIDE), "--out", str(tmp_path / "maps"))
    assert result.returncode == 2
    assert "whole fields" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "maps").exists()
