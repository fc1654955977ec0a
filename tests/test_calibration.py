"""Calibration on real images: coverage of the prediction sets holds on new images after `calibrate`,
calibrated probabilities survive export, and bad calibration input is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from conftest import CLASSES, NO_AUDITS, blood_files, link_class_folders, run_cli
from histoclass.calibration.conformal import conformal_thresholds, prediction_sets
from histoclass.inference.predictor import load
from histoclass.runs import ExportDir, ModelInfo, RunDir
from test_cli import assert_one_line_error


@pytest.fixture(scope="module")
def local_halves(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """1,600 labelled images none of the test runs trained on, split at random into two class-folder
    halves."""
    rng = np.random.default_rng(0)
    first, second = {}, {}
    for name, files in blood_files(400, offset=3).items():
        order = rng.permutation(len(files))
        first[name] = [files[i] for i in order[: len(files) // 2]]
        second[name] = [files[i] for i in order[len(files) // 2 :]]
    root = tmp_path_factory.mktemp("local")
    return link_class_folders(root / "a", first), link_class_folders(root / "b", second)


@pytest.fixture()
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("engines", "export*", "eval"))
    return copy


def test_calibrated_sets_cover_new_images_at_the_stated_rate(
    run_copy: Path, local_halves, tmp_path: Path
) -> None:
    first, second = local_halves
    before = ModelInfo.load(RunDir(run_copy).model_info).calibration
    result = run_cli(
        "calibrate", str(run_copy), "--data", str(first), "--coverage", "0.9", "--no-tta"
    )
    assert result.returncode == 0, result.stderr
    assert "coverage" in result.stderr and "ECE" in result.stderr
    after = ModelInfo.load(RunDir(run_copy).model_info).calibration
    assert (
        after.coverage == 0.9
        and after.fitted_on
        and after.images == sum(1 for _ in first.rglob("*.jpeg"))
    )
    history = json.loads(RunDir(run_copy).calibration_history.read_text())
    assert history[-1]["previous"]["temperature"] == before.temperature
    evaluated = run_cli(
        "evaluate",
        str(run_copy),
        "--data",
        str(second),
        "--engine",
        "torch",
        *NO_AUDITS,  # coverage is under test here
        "--no-tta",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((run_copy / "eval" / "b-no-tta" / "metrics.json").read_text())
    coverage = metrics["calibration"]["coverage"]
    assert abs(coverage - 0.9) <= 0.03, coverage  # 800 images the calibration never saw
    assert 1 <= metrics["calibration"]["mean_set_size"] <= len(CLASSES)
    assert set(metrics["calibration"]["per_class"]) == set(CLASSES)


def test_an_export_carries_the_new_calibration(run_copy: Path, local_halves) -> None:
    first, _ = local_halves
    assert (
        run_cli(
            "calibrate", str(run_copy), "--data", str(first), "--coverage", "0.8", "--no-tta"
        ).returncode
        == 0
    )
    assert run_cli("export", str(run_copy), "--format", "onnx").returncode == 0
    exported = ModelInfo.load(ExportDir(RunDir(run_copy).export.root).preprocess).calibration
    assert (
        exported == ModelInfo.load(RunDir(run_copy).model_info).calibration
        and exported.coverage == 0.8
    )
    assert json.loads(RunDir(run_copy).export.parity.read_text())["onnx"]["passed"]


def test_bad_calibration_input_is_one_line(run_copy: Path, local_halves, tmp_path: Path) -> None:
    first, _ = local_halves
    assert_one_line_error(
        run_cli("calibrate", str(run_copy), "--data", str(first), "--coverage", "1.5"), "coverage"
    )
    few = link_class_folders(tmp_path / "few", blood_files(10, offset=5))
    assert_one_line_error(run_cli("calibrate", str(run_copy), "--data", str(few)), "at least 50")
    other = link_class_folders(
        tmp_path / "other",
        {"TUMOR": blood_files(30)["EOSINOPHIL"], "STROMA": blood_files(30)["NEUTROPHIL"]},
    )
    assert_one_line_error(run_cli("calibrate", str(run_copy), "--data", str(other)), "class")


@pytest.fixture(scope="module")
def real_predictions(
    trained_run: Path, local_halves
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The trained run's probabilities and labels on the two halves of the local images."""
    predictor = load(trained_run)
    halves = []
    for half in local_halves:
        files = sorted(half.rglob("*.jpeg"))
        halves += [
            predictor.predict(files),
            np.array([CLASSES.index(f.parent.name) for f in files]),
        ]
    return tuple(halves)


def test_split_conformal_sets_equal_mapie(real_predictions) -> None:
    from mapie.classification import SplitConformalClassifier

    calibration, calibration_labels, new, _ = real_predictions
    ours = prediction_sets(new, conformal_thresholds(calibration, calibration_labels, 0.9))
    mapie = SplitConformalClassifier(
        ProbabilitiesAsFeatures().fit(calibration, calibration_labels), 0.9, "lac"
    )
    _, theirs = mapie.conformalize(calibration, calibration_labels).predict_set(new)
    assert np.array_equal(ours, theirs[:, :, 0])
    # the sets are not trivially the top class
    assert ours.sum(axis=1).max() > 1 and ours.sum() > len(ours)


def test_class_conditional_sets_equal_crepes(real_predictions) -> None:
    from crepes import ConformalClassifier

    calibration, calibration_labels, new, _ = real_predictions
    ours = prediction_sets(
        new, conformal_thresholds(calibration, calibration_labels, 0.9, mondrian=True)
    )
    crepes = ConformalClassifier().fit(
        1 - calibration[np.arange(len(calibration)), calibration_labels], bins=calibration_labels
    )
    theirs = np.stack(
        [
            crepes.predict_set(1 - new, np.full(len(new), k), confidence=0.9, smoothing=False)[:, k]
            for k in range(len(CLASSES))
        ],
        axis=1,
    )
    assert np.array_equal(ours, theirs.astype(bool))


class ProbabilitiesAsFeatures(ClassifierMixin, BaseEstimator):
    """A fitted scikit-learn classifier whose features are already the model's probabilities: how MAPIE is
    handed predictions made elsewhere."""

    def fit(self, probabilities: np.ndarray, labels: np.ndarray) -> ProbabilitiesAsFeatures:
        self.classes_ = np.arange(probabilities.shape[1])
        return self

    def predict_proba(self, probabilities: np.ndarray) -> np.ndarray:
        return probabilities

    def predict(self, probabilities: np.ndarray) -> np.ndarray:
        return probabilities.argmax(axis=1)
