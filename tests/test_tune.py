"""histoclass tune on real data: trials are runs, two processes share one study, a killed one's study resumes,
compare reads a study, and bad input is one line."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BREAST, LITE0, NO_AUDITS, run_cli, run_cli_process
from test_cli import assert_one_line_error

optuna = pytest.importorskip("optuna")
SQLAlchemyError = pytest.importorskip("sqlalchemy.exc").SQLAlchemyError

SPACE = """
data.image_size: {choices: [32]}
train.lr: {low: 0.001, high: 0.01, log: true}
train.unfreeze_last: {choices: [1, 2]}
augment.preset: null
model.name: null
"""


def tune_args(folder: Path, trials: int) -> list[str]:
    """A small study on BreastMNIST's official split: 32 px, 2 epochs a trial."""
    space = folder / "space.yaml"
    space.write_text(SPACE)
    flags = {
        "--data": BREAST,
        "--model": "tf_efficientnet_lite0",
        "--weights": LITE0,
        "--epochs": 2,
        "--phase1-epochs": 1,
        "--workers": 0,
        "--space": space,
        "--runs-dir": folder / "runs",
        "--study": "breast",
        "--trials": trials,
    }
    return ["tune", *(str(part) for pair in flags.items() for part in pair)]


def trials_of(folder: Path) -> list:
    database = folder / "runs" / "tune-breast" / "study.db"
    try:
        return (
            optuna.load_study(study_name="breast", storage=f"sqlite:///{database}").trials
            if database.is_file()
            else []
        )
    except (KeyError, SQLAlchemyError):
        # the database is there, the study not yet; or the two processes are creating its tables while
        # this reader opens it (a reader that fails here only looks again)
        return []


def states_of(folder: Path) -> list[str]:
    return [trial.state.name for trial in trials_of(folder)]


def wait_for(condition, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(1)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Processes A and B start a 3-trial study together; once a trial is done and both are running one, A is
    killed; B finishes the study; a third run asks for a 4th trial (the study resumed)."""
    folder = tmp_path_factory.mktemp("tune")
    command = [sys.executable, "-m", "histoclass", *tune_args(folder, 3)]
    log = folder / "second.log"
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(log, "w") as output:
        second = subprocess.Popen(command, stdout=output, stderr=output)
    try:
        wait_for(lambda: "COMPLETE" in states_of(folder) and "RUNNING" in states_of(folder))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.wait(timeout=600) == 0, log.read_text()[-2000:]
    resumed = run_cli_process(*tune_args(folder, 4))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return folder


@pytest.mark.slow
def test_processes_share_one_study_without_losing_or_repeating_a_trial(study: Path) -> None:
    trials = trials_of(study)
    assert [t.number for t in trials] == list(range(len(trials))) and len(trials) == 4
    states = [t.state.name for t in trials]
    # the killed process's trial, if it was in one
    stale = states.count("RUNNING") + states.count("FAIL")
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert stale <= 1 and len(finished) == 4 - stale
    assert len({tuple(sorted(t.params.items())) for t in finished}) == len(finished)
    root = study / "runs" / "tune-breast"
    # complete trials are whole runs; pruned ones left nothing (the killed one: anything)
    for trial in trials:
        run = root / f"trial-{trial.number:04d}"
        if trial.state.name in ("COMPLETE", "PRUNED"):
            assert (run / "model.safetensors").is_file() == (trial.state.name == "COMPLETE"), trial
    with open(root / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and rows[0]["state"] == "COMPLETE"
    best = [t for t in trials if t.state.name == "COMPLETE"]
    assert float(rows[0]["value"]) == min(t.value for t in best)
    assert os.readlink(root / "best") == rows[0]["run"] and (root / "best" / "model.json").is_file()
    assert (root / "plots" / "history.png").stat().st_size > 1000


@pytest.mark.slow
def test_the_best_trial_evaluates_and_compare_reads_the_study(study: Path) -> None:
    root = study / "runs" / "tune-breast"
    evaluated = run_cli(
        "evaluate",
        str(root / "best"),
        "--data",
        str(BREAST),
        "--split",
        "test",
        "--no-tta",
        *NO_AUDITS,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    compared = run_cli("compare", str(root))
    assert compared.returncode == 0, compared.stderr[-2000:]
    with open(root / "compare" / "compare.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) >= 2


def test_tune_bad_input_is_one_line(tmp_path: Path) -> None:
    args = tune_args(tmp_path, 2)
    space = tmp_path / "space.yaml"
    for text, expected in (
        ("train.learning_rate: {low: 0.001, high: 0.01}", "unknown parameter"),
        ("train.lr: {low: 0.01, high: 0.001}", "empty range"),
        ("train.unfreeze_last: {choices: []}", "no choices"),
        ("train.lr: {low: 0, high: 0.1, log: true}", "log scale"),
    ):
        space.write_text(text)
        assert_one_line_error(run_cli(*args), expected)
    space.write_text(SPACE)
    for storage in (
        "postgresql://nobody@127.0.0.1:9/study",
        f"sqlite:///{tmp_path}/missing/folder/study.db",
    ):
        assert_one_line_error(run_cli(*args, "--storage", storage), "--storage")
    assert_one_line_error(run_cli(*args, "--timeout", "soon"), "duration")
    assert_one_line_error(run_cli(*args[:-2]), "--trials, --timeout")  # a study needs an end


def test_a_tracked_run_shows_its_params_metrics_artifacts_and_evaluation_in_mlflow(
    tmp_path, monkeypatch
) -> None:
    """Through MLflow's own client, offline: the local SQLite store beside the runs."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = tmp_path / "runs"
    flags = {
        "--image-size": 32,
        "--lr": 0.003,
        "--logger": "mlflow",
        "--runs-dir": runs,
        "--name": "tracked",
    }
    common = tune_args(tmp_path, 1)[1:13]  # data, model, weights, epochs, phase-1 epochs, workers
    trained = run_cli("train", *common, *(str(part) for pair in flags.items() for part in pair))
    assert trained.returncode == 0, trained.stderr[-2000:]
    evaluated = run_cli(
        "evaluate",
        str(runs / "tracked"),
        "--data",
        str(BREAST),
        "--split",
        "test",
        "--no-tta",
        *NO_AUDITS,
    )
    assert evaluated.returncode == 0 and "MLflow run" in evaluated.stderr, evaluated.stderr[-2000:]
    client = mlflow.MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("histoclass")
    found = client.search_runs([experiment.experiment_id])
    assert len(found) == 1
    tracked = found[0]
    assert tracked.data.params["train.lr"] == "0.003" and tracked.info.run_name == "tracked"
    # one value an epoch
    assert len(client.get_metric_history(tracked.info.run_id, "val_loss")) == 2
    assert 0.5 < tracked.data.metrics["eval.breastmnist-test-no-tta.accuracy"] <= 1
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    assert {"config.yaml", "metrics.json", "history.csv", "model.json"} <= artifacts
    assert not (Path.cwd() / "mlruns").exists()  # nothing written where the command happened to run
