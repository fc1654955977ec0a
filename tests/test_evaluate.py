"""evaluate, predict, compare and the Python API on real held-out images."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

import histoclass
from conftest import BLOOD, BLOOD_TEST, BREAST, CLASSES, NO_AUDITS, run_cli, val_accuracy
from histoclass.evaluation.metrics import (
    METRIC_KEYS,
    ece_of_perfect_calibration,
    expected_calibration_error,
)

EVAL_FILES = [
    "metrics.json",
    "classification_report.txt",
    "confusion_matrix.png",
    "roc.png",
    "reliability.png",
    "predictions.csv",
    "most_confused.csv",
    "report.html",
]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def evaluated(trained_run: Path) -> Path:
    """The run evaluated on unseen cells (the audits have their own tests in test_audit)."""
    result = run_cli("evaluate", str(trained_run), "--data", str(BLOOD_TEST), *NO_AUDITS)
    assert result.returncode == 0, result.stderr[-2000:]
    return trained_run / "eval" / "test_simple"


def test_evaluate_writes_every_file_and_key(evaluated: Path) -> None:
    for name in EVAL_FILES:
        assert (evaluated / name).is_file(), name
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert list(metrics) == METRIC_KEYS
    assert metrics["n"] == 71 and metrics["labels"] == CLASSES
    assert set(metrics["per_class"]["MONOCYTE"]) == {"precision", "recall", "f1", "support", "auc"}


def test_metrics_agree_with_sklearn_from_predictions_csv(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "metrics.json").read_text())
    rows = read_rows(evaluated / "predictions.csv")
    y_true = np.array([CLASSES.index(r["true_label"]) for r in rows])
    y_pred = np.array([CLASSES.index(r["label"]) for r in rows])
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert metrics["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(y_true, y_pred)
    )
    assert metrics["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert metrics["weighted_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))
    assert metrics["macro_precision"] == pytest.approx(
        skm.precision_score(y_true, y_pred, average="macro", zero_division=0)
    )
    assert metrics["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y_true, probs, multi_class="ovr"), abs=1e-7
    )
    assert metrics["log_loss"] == pytest.approx(
        skm.log_loss(y_true, probs, labels=range(4)), abs=1e-7
    )
    assert metrics["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()
    assert metrics["ece"] == pytest.approx(expected_calibration_error(y_true, probs), abs=1e-7)
    assert metrics["accuracy"] > 0.4  # held-out images, chance 0.25


def test_ece_matches_a_direct_computation() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    truth = np.array([0, 1, 1, 0])
    # bins: 0.9 -> right (|1-0.9|), 0.6 -> wrong (|0-0.6|), 0.8 -> right (|1-0.8|), 0.55 -> wrong (|0-0.55|)
    assert expected_calibration_error(truth, probs) == pytest.approx((0.1 + 0.6 + 0.2 + 0.55) / 4)


def test_ece_agrees_with_torchmetrics_on_real_predictions(evaluated: Path) -> None:
    import torch
    from torchmetrics.classification import MulticlassCalibrationError

    rows = read_rows(evaluated / "predictions.csv")
    y_true = np.array([CLASSES.index(r["true_label"]) for r in rows])
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    reference = MulticlassCalibrationError(num_classes=4, n_bins=15, norm="l1")
    expected = float(reference(torch.from_numpy(probs).float(), torch.from_numpy(y_true)))
    assert expected_calibration_error(y_true, probs) == pytest.approx(expected, abs=1e-5)


def test_the_ece_of_perfect_calibration_shrinks_with_images_and_exposes_overconfidence(
    evaluated: Path,
) -> None:
    metrics = json.loads((evaluated / "metrics.json").read_text())
    rows = read_rows(evaluated / "predictions.csv")
    y_true = np.array([CLASSES.index(r["true_label"]) for r in rows])
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    perfect = metrics["calibration"]["ece_if_perfect"]
    assert (perfect["mean"], perfect["p95"]) == pytest.approx(
        ece_of_perfect_calibration(probs), abs=1e-6
    )
    assert 0 < perfect["mean"] < perfect["p95"]
    many, _ = ece_of_perfect_calibration(np.concatenate([probs] * 16))
    # sampling noise: about 1/sqrt(16) of it on 16 times the images
    assert many < perfect["mean"] / 2.5
    # 97% sure of answers right ~60% of the time
    overconfident = np.eye(4)[probs.argmax(axis=1)] * 0.97 + 0.01
    assert (
        expected_calibration_error(y_true, overconfident)
        > 2 * ece_of_perfect_calibration(overconfident)[1]
    )


def test_quality_benchmark_counts_each_unseen_cell_from_evaluate_predictions(
    evaluated: Path, tmp_path: Path
) -> None:
    from benchmarks.quality import cell_scores

    sources = sorted(BLOOD_TEST.rglob("*.jpeg"))  # each test_simple image as its own single copy
    rows = [(f"{s.parent.name}/{s.name}", number, s.name) for number, s in enumerate(sources)]
    with open(tmp_path / "truth.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("id", "source", "source_file"), *rows])
    cells = cell_scores(evaluated / "predictions.csv", tmp_path / "truth.csv")
    assert sorted(cells) == sorted(row[0] for row in rows) and all(
        total == 1 for _, total in cells.values()
    )
    accuracy = json.loads((evaluated / "metrics.json").read_text())["accuracy"]
    assert sum(right for right, _ in cells.values()) / len(cells) == pytest.approx(accuracy)


def test_report_html_renders_every_section_in_chromium(evaluated: Path, tmp_path: Path) -> None:
    html = (evaluated / "report.html").read_text()
    assert 'src="http' not in html and html.count("data:image/png;base64,") >= 4
    for section in (
        "summary",
        "config",
        "curves",
        "per-class",
        "confusion",
        "roc",
        "calibration",
        "gallery",
    ):
        assert f'id="{section}"' in html
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,4000",
            f"file://{evaluated / 'report.html'}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 50_000  # a page with plots, not a blank one


def test_predict_folder_of_1000_with_a_corrupt_image(trained_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
        for path in sorted((BLOOD / name).iterdir())[-250:]:
            (folder / name / path.name).symlink_to(path)
    victim = sorted((folder / "MONOCYTE").iterdir())[0]
    victim.unlink()
    victim.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "predictions.csv"
    # one view: the 8 of TTA are test_predict_kaggle_columns_csv_input_and_tta's subject
    result = run_cli("predict", str(trained_run), str(folder), "--out", str(out), "--no-tta")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_rows(out)
    assert len(rows) == 1000
    probabilities = [f"prob_{c}" for c in CLASSES]
    sets_and_shift = ["prediction_set", "set_size", "shift_score", "unlike_training"]
    assert list(rows[0]) == ["id", "label", "confidence", *probabilities, *sets_and_shift]
    broken = [r for r in rows if r["label"] == ""]
    assert [r["id"] for r in broken] == [victim.relative_to(folder).as_posix()]
    assert victim.name in result.stderr
    good = [r for r in rows if r["label"]]
    accuracy = np.mean([r["id"].split("/")[0] == r["label"] for r in good])
    assert accuracy > 0.4


def test_predict_kaggle_columns_csv_input_and_tta(trained_run: Path, tmp_path: Path) -> None:
    files = sorted((BLOOD_TEST / "LYMPHOCYTE").iterdir())
    ids = tmp_path / "ids.csv"
    ids.write_text("id\n" + "".join(f"{p.stem}\n" for p in files))
    out = tmp_path / "submission.csv"
    result = run_cli(
        "predict",
        str(trained_run),
        str(ids),
        "--image-dir",
        str(BLOOD_TEST / "LYMPHOCYTE"),
        "--columns",
        "id,label",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    rows = read_rows(out)
    assert list(rows[0]) == ["id", "label"] and [r["id"] for r in rows] == [p.stem for p in files]
    predictor = histoclass.load(trained_run)
    plain, tta = predictor.predict(files), predictor.predict(files, tta=True)
    assert np.allclose(tta.sum(axis=1), 1) and not np.allclose(plain, tta)
    # the CLI's default: 8 views
    assert [CLASSES[k] for k in tta.argmax(1)] == [r["label"] for r in rows]


def test_evaluate_npz_test_split_and_class_mismatch(trained_run: Path) -> None:
    result = run_cli("evaluate", str(trained_run), "--data", str(BREAST))
    assert result.returncode == 2 and "classes the model does not know" in result.stderr


def test_compare_two_runs(trained_run: Path, probe_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = run_cli("compare", str(trained_run), str(probe_run), "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = read_rows(out / "compare.csv")
    assert [r["run"] for r in rows] == ["pretrained", "probe-linear"]
    for row, run in zip(rows, (trained_run, probe_run), strict=True):
        assert float(row["accuracy"]) == pytest.approx(val_accuracy(run), abs=1e-4)
    assert float(rows[0]["parameters_m"]) > 3 and rows[0]["best_epoch"]
    assert (out / "compare.png").stat().st_size > 10_000 and "| run |" in (
        out / "compare.md"
    ).read_text()


def test_predict_never_writes_over_an_input_or_into_a_folder(
    trained_run: Path, tmp_path: Path
) -> None:
    image = tmp_path / "cell.jpeg"
    shutil.copy(sorted((BLOOD / "MONOCYTE").iterdir())[0], image)
    before = image.read_bytes()
    same, folder = (
        run_cli("predict", str(trained_run), str(image), "--out", str(image)),
        run_cli("predict", str(trained_run), str(image), "--out", str(tmp_path)),
    )
    assert same.returncode == 2 and "is one of the input images" in same.stderr, same.stderr[-1000:]
    assert (
        folder.returncode == 2
        and "is a folder" in folder.stderr
        and "Traceback" not in folder.stderr
    )
    assert image.read_bytes() == before
