"""``train --folds``: group-aware folds that never see the run's validation split, per-fold figures
as mean ± sd, and an ensemble that answers the mean of its folds and exports as one checked
graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, small_config
from histoclass.calibration.temperature import calibrated_probabilities
from histoclass.config import build_config
from histoclass.data.images import load_resized
from histoclass.inference.predictor import load
from histoclass.runs import RunDir
from histoclass.runs.split import read_split

FOLDS = 3


@pytest.fixture(scope="module")
def folds_run(blood_subset: Path, runs_dir: Path) -> Path:
    from histoclass.training.job import train

    # 3 short epochs of ~10 steps: weight averaging would still lean on the first steps, so it is off here
    values = small_config(blood_subset, runs_dir, "folds", epochs=3, folds=FOLDS, ema=0.0)
    values["data"]["image_size"] = 64
    return train(build_config(values))


def _ids(path: Path, split: str) -> list[str]:
    return [row.id for row in read_split(path) if row.split == split]


def test_folds_partition_the_training_images_by_group_and_keep_out_the_validation_split(
    folds_run: Path,
) -> None:
    run = RunDir(folds_run)
    held_out, pool = set(_ids(run.split, "val")), set(_ids(run.split, "train"))
    fold_val = [set(_ids(run.fold(k).split, "val")) for k in range(1, FOLDS + 1)]
    # each image once
    assert set().union(*fold_val) == pool and sum(len(v) for v in fold_val) == len(pool)
    for k in range(1, FOLDS + 1):
        rows = read_split(run.fold(k).split)
        assert not held_out & {row.id for row in rows}
        groups = {
            split: {row.group for row in rows if row.split == split} for split in ("train", "val")
        }
        assert groups["val"] and not groups["train"] & groups["val"]


def test_folds_report_mean_and_sd_and_the_ensemble_is_scored_on_the_held_out_split(
    folds_run: Path,
) -> None:
    run = RunDir(folds_run)
    metrics = json.loads(run.metrics.read_text())
    per_fold = [
        json.loads(run.fold(k).metrics.read_text())["val_accuracy"] for k in range(1, FOLDS + 1)
    ]
    assert metrics["folds"]["count"] == FOLDS
    assert metrics["folds"]["mean"]["val_accuracy"] == pytest.approx(np.mean(per_fold))
    assert metrics["folds"]["sd"]["val_accuracy"] == pytest.approx(np.std(per_fold, ddof=1))
    assert metrics["val_accuracy"] > 0.45  # 4 classes: chance is 0.25, on images no fold trained on
    assert metrics["calibration"]["temperature"] > 0


def test_the_ensemble_answers_the_mean_of_its_folds(folds_run: Path, blood_subset: Path) -> None:
    files = [blood_subset / image_id for image_id in _ids(RunDir(folds_run).split, "val")[:48]]
    ensemble = load(folds_run)
    assert ensemble.info.members == FOLDS
    pixels = np.stack([load_resized(f, ensemble.info.image_size) for f in files])
    folds = [load(RunDir(folds_run).fold(k).root) for k in range(1, FOLDS + 1)]
    uncalibrated = [calibrated_probabilities(p.view_logits(pixels)) for p in [ensemble, *folds]]
    assert np.allclose(uncalibrated[0], np.mean(uncalibrated[1:], axis=0), atol=1e-5)


def test_the_ensemble_exports_as_one_graph_that_passes_parity(folds_run: Path) -> None:
    for fmt in ("onnx", "openvino"):
        result = run_cli("export", str(folds_run), "--format", fmt)
        assert result.returncode == 0, result.stderr
        assert json.loads(RunDir(folds_run).export.parity.read_text())[fmt]["passed"], fmt
    assert [p.name for p in RunDir(folds_run).export.root.glob("*.onnx")] == ["model.onnx"]
