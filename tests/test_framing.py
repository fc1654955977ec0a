"""Cell framing: the square around each image's cell, found the same in a wide field and a tight crop, and
carried by a run into every later use (predict, serve, embed); the shift score still sees whole images, so
images of another kind stay flagged; slides refuse it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from benchmarks.robustness import other_kinds
from PIL import Image

from conftest import BLOOD_TEST, SLIDE, TECOM, probe, run_cli
from histoclass.data.framing import frame
from histoclass.data.images import load_resized, resize_square
from histoclass.data.inputs import collect_inputs
from histoclass.data.records import ImageRecords
from histoclass.deploy import open_predictor
from histoclass.prediction.batch import run_predictions
from histoclass.runs import ModelInfo, RunDir
from histoclass.serving.uploads import decode_resized
from histoclass.shift.scorer import build_reference
from test_serve import start_server, upload

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
    """A linear probe on the shared subset, seeing a square around each image's cell, with the shift
    reference a fine-tuned run gets when it finishes (probes skip that pass over the images)."""
    run = probe(blood_subset, runs_dir, "probe-cell", "linear", framing="cell")
    ids, paths = collect_inputs([str(blood_subset)])
    records = ImageRecords(ids, np.zeros(len(ids), np.int64), paths).framed("cell")
    build_reference(
        RunDir(run), records.subset(range(0, len(ids), 2)), records.subset(range(1, len(ids), 2))
    )
    return run


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


def _shift(predictor, folder: Path) -> np.ndarray:
    ids, paths = collect_inputs([str(folder)])
    return run_predictions(predictor, ImageRecords(ids, np.full(len(ids), -1), paths)).shift


def test_images_of_another_kind_stay_unlike_a_framed_run(
    framed_probe: Path, tmp_path: Path
) -> None:
    """Around its densest object an ultrasound image or a tissue tile looks like a cell: the score sees
    whole images."""
    predictor = open_predictor(framed_probe, "torch")
    same = _shift(predictor, BLOOD_TEST)
    other = _shift(predictor, other_kinds(tmp_path / "kinds", count=30))
    unlike = predictor.shift.reference.unlike
    assert unlike(other).mean() > 0.9, other
    assert unlike(same).mean() < 0.2, same


def test_serve_frames_the_model_input_and_scores_the_whole_image(framed_probe: Path) -> None:
    predictor = open_predictor(framed_probe, "torch")
    size = predictor.info.image_size
    path = sorted(TECOM.glob("*/*.bmp"))[0]
    process, url = start_server(framed_probe, "--no-tta", "--engine", "torch")
    try:
        result = upload(url, [(path.name, path.read_bytes())]).json()["results"][0]
    finally:
        process.terminate()
        process.wait(timeout=30)
    probabilities = predictor.predict_pixels(load_resized(path, size, "cell")[None])[0]
    assert np.allclose(
        [result["probabilities"][k] for k in predictor.labels], probabilities, atol=1e-4
    )
    whole = predictor.shift_scores(load_resized(path, size)[None])[0]
    assert abs(result["shift_score"] - whole) < 1e-4
