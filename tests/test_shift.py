"""The shift score: images of another lab or another kind are told from unseen same-lab images without labels,
and predict/evaluate print the batch verdict on another lab's cells only."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from conftest import BLOOD_TEST, BREAST, SLIDE, TECOM, run_cli_all
from histoclass.data.inputs import collect_inputs
from histoclass.data.records import ImageRecords
from histoclass.deploy import open_predictor
from histoclass.prediction.batch import run_predictions
from histoclass.shift.reference import ShiftReference, fit_reference

VERDICT = "unlike the training data"


def _records(folder: Path) -> ImageRecords:
    ids, paths = collect_inputs([str(folder)])
    return ImageRecords(ids=ids, labels=np.full(len(ids), -1), paths=paths)


def _other_kinds(folder: Path) -> Path:
    """60 BreastMNIST ultrasound images and 60 H&E tiles cut from the shared Aperio slide, as PNG files."""
    folder.mkdir()
    with np.load(BREAST) as data:
        for i, image in enumerate(data["test_images"][:60]):
            Image.fromarray(image).save(folder / f"breast_{i}.png")
    with Image.open(SLIDE) as slide:  # one level of JPEG tiles: Pillow reads it as a TIFF
        slide = slide.convert("RGB")
        # over the tissue (the slide's middle third), not the white glass around it
        for i in range(60):
            x, y = 800 + (i % 10) * 90, 1300 + (i // 10) * 250
            slide.crop((x, y, x + 128, y + 128)).save(folder / f"he_{i}.png")
    return folder


@pytest.fixture(scope="module")
def scores(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    predictor = open_predictor(trained_run, "torch")
    assert predictor.shift is not None, "a finished run carries its shift reference"
    others = _other_kinds(tmp_path_factory.mktemp("kinds") / "kinds")
    sources = {"same lab": BLOOD_TEST, "other lab": TECOM, "other kind": others}
    return {
        name: run_predictions(predictor, _records(path)).shift for name, path in sources.items()
    }


def _auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    return roc_auc_score(
        np.r_[np.zeros(len(negative)), np.ones(len(positive))], np.r_[negative, positive]
    )


def test_another_lab_and_another_kind_score_as_shifted(scores: dict[str, np.ndarray]) -> None:
    assert _auroc(scores["same lab"], scores["other lab"]) >= 0.95
    assert _auroc(scores["same lab"], scores["other kind"]) >= 0.99


def test_the_verdict_is_printed_for_another_lab_only(trained_run: Path, tmp_path: Path) -> None:
    calls = [
        ["predict", str(trained_run), str(TECOM), "--out", str(tmp_path / "tecom.csv"), "--no-tta"],
        [
            "predict",
            str(trained_run),
            str(BLOOD_TEST),
            "--out",
            str(tmp_path / "same.csv"),
            "--no-tta",
        ],
    ]
    other, same = run_cli_all(calls)
    assert other.returncode == 0 and same.returncode == 0, (
        other.stderr[-2000:] + same.stderr[-2000:]
    )
    said = {
        name: " ".join((result.stdout + result.stderr).split())
        for name, result in (("other", other), ("same", same))
    }
    assert VERDICT in said["other"] and VERDICT not in said["same"]
    with open(tmp_path / "tecom.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 299 and {"shift_score", "unlike_training"} <= set(rows[0])
    assert np.mean([row["unlike_training"] == "1" for row in rows]) > 0.5


def test_a_reference_round_trips_and_its_threshold_is_the_held_out_quantile(
    tmp_path: Path, rng
) -> None:
    """Features of four sources (clusters) as reference and held out; a fifth source lies beyond the
    threshold."""
    centres = rng.normal(scale=3.0, size=(5, 16))

    def draw(sources: list[int], n: int) -> np.ndarray:
        return centres[rng.choice(sources, n)] + rng.normal(scale=0.7, size=(n, 16))

    reference, held_out = draw([0, 1, 2, 3], 400), draw([0, 1, 2, 3], 200)
    fitted = fit_reference(reference, held_out, k=5, quantile=0.9)
    assert np.mean(fitted.score(held_out) <= fitted.threshold) == pytest.approx(0.9, abs=0.01)
    fitted.save(tmp_path / "shift.npz")
    loaded = ShiftReference.load(tmp_path / "shift.npz")
    assert loaded.threshold == fitted.threshold and loaded.k == 5
    # float16 storage
    np.testing.assert_allclose(loaded.score(held_out), fitted.score(held_out), atol=2e-3)
    assert np.mean(fitted.unlike(fitted.score(draw([4], 100)))) > 0.9
