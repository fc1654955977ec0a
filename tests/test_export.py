"""Exported models agree with the PyTorch model on real images, and the ONNX path needs no torch."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import histoclass
from conftest import BLOOD_TEST, CLASSES, NO_AUDITS, run_cli

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {FORBIDDEN}:
            raise ImportError(f"{name} is forbidden in this process")
sys.meta_path.insert(0, Block())
"""
BLOCK_TORCH = BLOCK.replace(
    "{FORBIDDEN}", '{"torch", "timm", "lightning", "torchvision", "torchmetrics"}'
)
BLOCK_LIGHTNING = BLOCK.replace("{FORBIDDEN}", '{"lightning", "pytorch_lightning"}')


@pytest.fixture(scope="module")
def onnx_model(trained_run: Path) -> Path:
    result = run_cli("export", str(trained_run), "--format", "onnx")
    assert result.returncode == 0, result.stderr[-2000:]
    return trained_run / "export" / "model.onnx"


def test_onnx_export_files_and_recorded_parity(onnx_model: Path) -> None:
    folder = onnx_model.parent
    assert (folder / "labels.txt").read_text().split() == CLASSES
    preprocess = json.loads((folder / "preprocess.json").read_text())
    assert (
        preprocess["image_size"] == 96
        and preprocess["mean"] == [0.5, 0.5, 0.5]
        and preprocess["layout"] == "NCHW"
    )
    parity = json.loads((folder / "parity.json").read_text())["onnx"]
    assert parity["passed"] and parity["top1_agreement"] >= 0.995 and parity["max_abs_diff"] <= 1e-3
    assert parity["images"] == 120  # the run's whole validation split
    import onnx

    graph = onnx.load(str(onnx_model))
    assert graph.opset_import[0].version >= 17
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_onnx_predictions_match_pytorch_on_held_out_images(
    trained_run: Path, onnx_model: Path
) -> None:
    files = sorted(BLOOD_TEST.rglob("*.jpeg"))
    torch_probs = histoclass.load(trained_run).predict(files)
    onnx_probs = histoclass.load(onnx_model).predict(files)
    assert np.abs(torch_probs - onnx_probs).max() < 1e-3
    assert (torch_probs.argmax(1) == onnx_probs.argmax(1)).mean() >= 0.995


def test_onnx_predict_runs_where_torch_is_forbidden(
    trained_run: Path, onnx_model: Path, tmp_path: Path
) -> None:
    script = BLOCK_TORCH + "from histoclass.cli import main\nsys.argv[0] = 'histoclass'\nmain()\n"
    out_onnx, out_torch = tmp_path / "onnx.csv", tmp_path / "torch.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "predict",
            str(onnx_model),
            str(BLOOD_TEST),
            "--out",
            str(out_onnx),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    refused = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + "import torch"], capture_output=True, text=True
    )
    assert refused.returncode != 0 and "forbidden" in refused.stderr
    assert (
        run_cli("predict", str(trained_run), str(BLOOD_TEST), "--out", str(out_torch)).returncode
        == 0
    )

    def labels(path: Path) -> list[tuple[str, str]]:
        with open(path, newline="") as handle:
            return [(row["id"], row["label"]) for row in csv.DictReader(handle)]

    assert labels(out_onnx) == labels(out_torch) and len(labels(out_onnx)) == 71


def test_evaluate_accepts_an_onnx_model(onnx_model: Path) -> None:
    result = run_cli("evaluate", str(onnx_model), "--data", str(BLOOD_TEST), *NO_AUDITS)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (onnx_model.parent / "eval" / "test_simple" / "report.html").is_file()


def test_int8_and_nhwc_and_torchscript(trained_run: Path, tmp_path: Path) -> None:
    result = run_cli(
        "export", str(trained_run), "--format", "onnx", "--int8", "--check-data", str(BLOOD_TEST)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "int8:" in result.stderr and "MB ->" in result.stderr
    parity = json.loads((trained_run / "export" / "parity.json").read_text())["onnx"]["int8"]
    assert parity["size_bytes_int8"] < parity["size_bytes_float"] / 2
    assert (trained_run / "export" / "model.int8.onnx").is_file() == parity["kept"]
    result = run_cli("export", str(trained_run), "--format", "torchscript", "--nhwc")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        json.loads((trained_run / "export" / "nhwc" / "preprocess.json").read_text())["layout"]
        == "NHWC"
    )
    assert json.loads((trained_run / "export" / "preprocess.json").read_text())["layout"] == "NCHW"
    files = sorted(BLOOD_TEST.rglob("*.jpeg"))[:8]
    scripted = histoclass.load(trained_run / "export" / "nhwc" / "model.pt").predict(files)
    assert np.abs(scripted - histoclass.load(trained_run).predict(files)).max() < 1e-4


def test_export_bad_inputs(trained_run: Path, tmp_path: Path) -> None:
    unknown = run_cli("export", str(trained_run), "--format", "coreml")
    assert (
        unknown.returncode == 2
        and "unknown format 'coreml'" in unknown.stderr
        and "Traceback" not in unknown.stderr
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.json", "config.yaml", "labels.txt"):
        (broken / name).write_bytes((trained_run / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    damaged = run_cli("export", str(broken))
    assert (
        damaged.returncode == 2
        and "damaged" in damaged.stderr
        and "Traceback" not in damaged.stderr
    )
    (broken / "model.safetensors").unlink()
    missing = run_cli("export", str(broken))
    assert (
        missing.returncode == 2 and "not a model" in missing.stderr
    ) or "model.safetensors" in missing.stderr
    assert not (broken / "export").exists() or not any((broken / "export").glob("model.*"))


def test_tflite_export_agrees_with_pytorch_on_held_out_images(
    trained_run: Path, tmp_path: Path
) -> None:
    result = run_cli("export", str(trained_run), "--format", "tflite")
    assert result.returncode == 0, result.stderr[-2000:]
    model = trained_run / "export" / "model.tflite"
    assert json.loads((trained_run / "export" / "parity.json").read_text())["tflite"]["passed"]
    files = sorted(BLOOD_TEST.rglob("*.jpeg"))
    lite, reference = (
        histoclass.load(model).predict(files),
        histoclass.load(trained_run).predict(files),
    )
    assert (lite.argmax(1) == reference.argmax(1)).mean() >= 0.995
    assert np.abs(lite - reference).max() < 1e-3
    out = tmp_path / "tflite.csv"
    assert (
        run_cli("predict", str(model), str(BLOOD_TEST), "--out", str(out), "--no-tta").returncode
        == 0
    )
    with open(out, newline="") as handle:
        assert [row["label"] for row in csv.DictReader(handle)] == [
            CLASSES[k] for k in lite.argmax(1)
        ]


def test_predict_with_a_run_directory_never_imports_lightning(
    trained_run: Path, tmp_path: Path
) -> None:
    script = (
        BLOCK_LIGHTNING + "from histoclass.cli import main\nsys.argv[0] = 'histoclass'\nmain()\n"
    )
    out = tmp_path / "p.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "predict",
            str(trained_run),
            str(BLOOD_TEST),
            "--out",
            str(out),
            "--tta",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 71


def test_interrupted_jobs_leave_nothing_behind_and_outputs_follow_the_umask(
    trained_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("engines", "export*", "eval"))
    interrupted = subprocess.Popen(
        [sys.executable, "-m", "histoclass", "export", str(run), "--format", "onnx"]
    )
    for _ in range(1200):  # killed once its staging folder exists, before anything is exported
        if list(run.glob(".export-staging-*")):
            break
        time.sleep(0.05)
    interrupted.kill()
    interrupted.wait()
    # a fresh export that never finished leaves no empty folder
    assert not (run / "export").exists()
    dead = 2**22 + 12345  # above pid_max's default: no such process
    stale_export = run / f".export-staging-{dead}-x1y2"
    stale_eval = run / "eval" / f".test_simple.{dead}-x1y2"
    for stale in (stale_export, stale_eval):  # what a killed export and evaluation leave
        stale.mkdir(parents=True)
        (stale / "model.onnx").write_bytes(b"\0" * 1000)
    assert run_cli("export", str(run), "--format", "onnx").returncode == 0
    assert (
        run_cli(
            "evaluate", str(run), "--data", str(BLOOD_TEST), "--engine", "torch", *NO_AUDITS
        ).returncode
        == 0
    )
    assert not stale_export.exists() and not stale_eval.exists()
    assert not [p for p in (run / "export").iterdir() if p.name.startswith(".")]
    umask = os.umask(0)
    os.umask(umask)
    for path in (
        run / "export" / "model.onnx",
        run / "eval" / "test_simple" / "metrics.json",
        trained_run / "model.safetensors",
    ):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    for path in (run / "eval" / "test_simple", run / "export"):
        assert path.stat().st_mode & 0o777 == 0o777 & ~umask, path


def test_damaged_sidecars_and_records_are_one_line(
    trained_run: Path, onnx_model: Path, tmp_path: Path
) -> None:
    export = tmp_path / "export"
    shutil.copytree(onnx_model.parent, export)
    image = str(sorted(BLOOD_TEST.rglob("*.jpeg"))[0])
    labels = (export / "labels.txt").read_text().splitlines()
    (export / "labels.txt").write_text("\n".join(labels[:-1]) + "\n")
    wrong_count = run_cli(
        "predict", str(export / "model.onnx"), image, "--out", str(tmp_path / "a.csv")
    )
    (export / "labels.txt").write_text("\n".join(labels) + "\n")
    preprocess = (export / "preprocess.json").read_text()
    (export / "preprocess.json").write_text(preprocess[: len(preprocess) // 2])
    truncated = run_cli(
        "predict", str(export / "model.onnx"), image, "--out", str(tmp_path / "b.csv")
    )
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.json", "model.safetensors", "config.yaml", "labels.txt"):
        (run / name).write_bytes((trained_run / name).read_bytes())
    (run / "metrics.json").write_text('{"val_accuracy": 0.9')
    compared = run_cli("compare", str(run), str(trained_run), "--out", str(tmp_path / "cmp"))
    (run / "model.json").write_text('{"architecture": "tf_efficientnet_lite0", "labels": 3}')
    bad_info = run_cli(
        "predict", str(run), image, "--out", str(tmp_path / "c.csv"), "--engine", "torch"
    )
    expected = {
        "names 3 classes": wrong_count,
        "preprocess.json' is damaged": truncated,
        "metrics.json' is damaged": compared,
        "model.json' is damaged": bad_info,
    }
    for message, result in expected.items():
        assert result.returncode == 2 and message in result.stderr, result.stderr[-1500:]
        assert len(result.stderr.strip().splitlines()) == 1
