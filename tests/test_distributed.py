"""DDP on CPU (gloo), resume after SIGKILL and SIGTERM: nothing lost, nothing repeated."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import histoclass
from conftest import blood_files, link_class_folders, quick_train, run_cli, run_cli_process
from histoclass.calibration.temperature import calibrated_probabilities
from histoclass.data.images import load_resized
from histoclass.runs.history import read_history


@pytest.fixture(scope="module")
def uneven(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 x 31 images: 124, a validation split of 25, neither divisible by 2 processes x batch 8."""
    return link_class_folders(tmp_path_factory.mktemp("uneven") / "data", blood_files(31))


def train_args(data: Path, runs: Path, name: str, epochs: int = 3, *extra: str) -> list[str]:
    flags = {"image_size": 48, "epochs": epochs, "batch_size": 8, "accelerator": "cpu"}
    return quick_train(data, runs, name, *extra, **flags)


@pytest.mark.slow
def test_ddp_two_processes_metrics_equal_single_process_evaluation(
    uneven: Path, tmp_path: Path
) -> None:
    result = run_cli_process(*train_args(uneven, tmp_path, "ddp", 2, "--devices", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "ddp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # both ranks wrote into one run
    assert "2 process(es) x 8 images = effective batch 16" in result.stdout + result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "split.csv", newline="") as handle:
        val = [(row["id"], row["label"]) for row in csv.DictReader(handle) if row["split"] == "val"]
    assert len(val) % 16 != 0
    predictor = histoclass.load(run)
    pixels = np.stack(
        [load_resized(uneven / image_id, predictor.info.image_size) for image_id, _ in val]
    )
    # uncalibrated, as in training
    probabilities = calibrated_probabilities(predictor.view_logits(pixels), 1.0)
    labels = predictor.labels
    truth = np.array([labels.index(label) for _, label in val])
    accuracy = float((probabilities.argmax(1) == truth).mean())
    loss = float(-np.log(probabilities[np.arange(len(truth)), truth]).mean())
    assert accuracy == pytest.approx(metrics["val_accuracy"], abs=1e-6)
    assert loss == pytest.approx(metrics["val_loss"], abs=1e-4)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]


def wait_for_epochs(run: Path, count: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(read_history(run / "history.csv")) < count:
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "histoclass", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(uneven: Path, tmp_path: Path) -> None:
    assert run_cli(*train_args(uneven, tmp_path, "straight", 3)).returncode == 0
    process = start(train_args(uneven, tmp_path, "killed", 3))
    run = tmp_path / "killed"
    wait_for_epochs(run, 2, process)
    last = run / "checkpoints" / "last.ckpt"
    while not last.is_file() or last.stat().st_mtime < (run / "history.csv").stat().st_mtime:
        # epoch 2's checkpoint is written just after its history row: kill in epoch 3
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "model.safetensors").exists()
    resumed = run_cli("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = read_history(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert [r["phase"] for r in history] == ["1", "2", "2"]
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "model.safetensors").is_file()
    straight, again = final_weights(tmp_path / "straight"), final_weights(run)
    assert straight.keys() == again.keys()
    worst = max(float((straight[k].float() - again[k].float()).abs().max()) for k in straight)
    assert worst < 1e-5, worst
    for key in ("val_loss", "val_accuracy"):
        assert float(read_history(tmp_path / "straight" / "history.csv")[-1][key]) == pytest.approx(
            float(history[-1][key]), abs=1e-5
        )


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_finishes(uneven: Path, tmp_path: Path) -> None:
    process = start(train_args(uneven, tmp_path, "term", 3, "--checkpoint-every-steps", "3"))
    run = tmp_path / "term"
    wait_for_epochs(run, 1, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert "saving a checkpoint" in output
    assert process.returncode == 130 and f"histoclass train --resume {run}" in output
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "model.safetensors").exists()
    unfinished = run_cli("predict", str(run), str(uneven), "--out", str(tmp_path / "p.csv"))
    assert (
        unfinished.returncode == 2
        and "unfinished run" in unfinished.stderr
        and "--resume" in unfinished.stderr
    )
    resumed = run_cli("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    history = read_history(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert load_file(str(run / "model.safetensors"))
    assert os.listdir(run / "checkpoints")


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    result = run_cli("train", "--resume", str(tmp_path / "run"))
    assert result.returncode == 2 and "not a run directory" in result.stderr
