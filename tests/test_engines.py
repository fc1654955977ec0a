"""Engines behind the one predictor: every engine agrees with PyTorch on real images, `auto` picks a checked
engine, caches its conversion by the weights, and falls back when a runtime is missing or disagrees."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BLOOD_TEST, run_cli
from histoclass.data.images import load_resized
from histoclass.deploy import engines
from histoclass.deploy.engines import convert_run, open_predictor
from histoclass.inference.predictor import Predictor, load
from histoclass.models.factory import create_model
from histoclass.runs import ExportDir, ModelInfo, RunDir

IMAGES = sorted(BLOOD_TEST.rglob("*.jpeg"))[:48]


@pytest.fixture()
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy: these tests build and break engine caches."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("engines", "export*"))
    return copy


def agreement(a: Predictor, b: Predictor) -> float:
    return float((a.predict(IMAGES).argmax(1) == b.predict(IMAGES).argmax(1)).mean())


#: OpenVINO runs in a child process in these tests: loaded into the pytest process beside the in-process
#: trainings of the session fixtures, a later subprocess call crashed that process (SIGSEGV in waitpid).
OPENVINO_CHECK = """
import json, sys
from pathlib import Path
import numpy as np
from histoclass.inference.engines.openvino_engine import OpenVinoEngine, openvino_core
from histoclass.inference.predictor import Predictor
images = [Path(p) for p in json.loads(sys.argv[2])]
def predict(precision):
    return Predictor(OpenVinoEngine(Path(sys.argv[1]), precision=precision)).predict(images).tolist()
out = {p: predict(p) for p in ("f32", "bf16")}
out["native_bf16"] = "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
print(json.dumps(out))
"""


def openvino_probabilities(model: Path) -> dict[str, np.ndarray]:
    command = [
        sys.executable,
        "-c",
        OPENVINO_CHECK,
        str(model),
        json.dumps([str(p) for p in IMAGES]),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    # native_bf16: 0-d
    return {k: np.array(v) for k, v in json.loads(result.stdout.splitlines()[-1]).items()}


def test_every_engine_agrees_with_pytorch_on_real_images(run_copy: Path) -> None:
    torch_predictor = open_predictor(run_copy, "torch")
    assert torch_predictor.engine.name == "torch"
    onnx = open_predictor(run_copy, "onnx")
    assert onnx.engine.name == "onnx" and agreement(torch_predictor, onnx) >= 0.995
    cache = ExportDir(onnx.source.parent)
    expected = torch_predictor.predict(IMAGES)
    openvino = openvino_probabilities(cache.root)
    assert np.abs(openvino["f32"] - expected).max() < 1e-3
    # bf16 with its near ties computed again in f32: those rows are f32's exactly, and the top-1 answers hold
    rechecked = np.abs(openvino["bf16"] - openvino["f32"]).max(axis=1) == 0
    if openvino["native_bf16"]:  # else the bf16 hint runs f32
        assert 0 < rechecked.sum() < len(IMAGES), rechecked.sum()
    assert (openvino["bf16"].argmax(1) == expected.argmax(1)).mean() >= 0.98
    records = json.loads(cache.parity.read_text())
    assert records["onnx"]["passed"] and records["onnx"]["images"] > 0


def predict_auto(run: Path, out: Path) -> str:
    result = run_cli("predict", str(run), *map(str, IMAGES[:8]), "--out", str(out), "--no-tta")
    assert result.returncode == 0, result.stderr
    return result.stderr.split("engine: ")[1].split()[0]  # e.g. "openvino-f32", "onnx", "torch"


def test_auto_uses_a_checked_engine_and_caches_it_by_the_weights(
    run_copy: Path, tmp_path: Path
) -> None:
    chosen = predict_auto(run_copy, tmp_path / "a.csv")
    [cache] = RunDir(run_copy).engines.iterdir()
    records = json.loads(ExportDir(cache).parity.read_text())
    passed = {name: r for name, r in records.items() if r["passed"]}
    assert passed and all(r["images_per_second"] > 0 for r in records.values())
    best = max(passed, key=lambda name: passed[name]["images_per_second"])
    faster = passed[best]["images_per_second"] > passed[best]["torch_images_per_second"]
    assert chosen == (best if faster else "torch")  # the fastest checked engine, measured here
    assert predict_auto(run_copy, tmp_path / "b.csv") == chosen
    assert list(RunDir(run_copy).engines.iterdir()) == [cache]  # reused, not rebuilt
    # speeds hold for the machine they were measured on
    assert all(r["machine"] for r in records.values())
    size = ModelInfo.load(RunDir(run_copy).model_info).image_size
    opened = "from histoclass.deploy import open_predictor as o; import sys, numpy as np; "
    opened += (
        f"p = o({str(run_copy)!r}); p.shift_scores(np.zeros((2, {size}, {size}, 3), np.uint8)); "
    )
    opened += "print(p.engine.name, 'torch' in sys.modules)"
    answer = subprocess.run(
        [sys.executable, "-c", opened], capture_output=True, text=True, check=True
    ).stdout.split()
    # a recorded engine opens, predicts and scores shift without torch (its shift module converted
    # beside it), with PyTorch's shift scores
    assert answer == [chosen.split("-")[0], str(chosen == "torch")]
    pixels = np.stack([load_resized(p, size) for p in IMAGES[:16]])
    scores = [open_predictor(run_copy, e).shift_scores(pixels) for e in ("auto", "torch")]
    assert np.abs(scores[0] - scores[1]).max() < 1e-3 * np.abs(scores[1]).max()
    info = ModelInfo.load(RunDir(run_copy).model_info)
    info.calibration.temperature *= 1.5  # new calibration: the conversion must follow
    info.save(RunDir(run_copy).model_info)
    predict_auto(run_copy, tmp_path / "c.csv")
    [rebuilt] = RunDir(run_copy).engines.iterdir()
    assert rebuilt != cache
    expected = load(run_copy).predict(IMAGES[:8])
    with (tmp_path / "c.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    got = np.array(
        [[float(row[f"prob_{label}"]) for label in load(run_copy).labels] for row in rows]
    )
    assert np.abs(got - expected).max() < 1e-3


def test_a_long_validation_pass_runs_on_the_engine_predict_picks(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finishing a run on a CPU: from CONVERT_FROM image passes the validation split's test-time views
    are predicted on the checked engine ``auto`` picks, its conversion kept in the run, with the
    logits PyTorch gives; fewer stay with PyTorch."""
    import torch

    from histoclass.runs.records import split_records
    from histoclass.training import finish

    run = RunDir(run_copy)
    records = split_records(run, "val")
    expected, labels = finish.validation_logits(run, records)
    assert finish.validation_engine(len(records), 8) == "torch" and not run.engines.exists()
    monkeypatch.setattr(finish, "CONVERT_FROM", len(records) * 8)
    if torch.cuda.is_available():  # a GPU keeps PyTorch
        assert finish.validation_engine(len(records), 8) == "torch"
        return
    assert finish.validation_engine(len(records), 8) == "auto"
    got, same = finish.validation_logits(run, records)
    assert len(list(run.engines.iterdir())) == 1  # converted and checked once, kept for predict
    assert np.array_equal(labels, same) and got.shape == expected.shape == (len(records), 8, 4)
    # f32 engines to ~1e-5; OpenVINO bf16 (CPUs that compute it natively) to its rounding
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    assert (got.mean(1).argmax(1) == expected.mean(1).argmax(1)).mean() >= 0.99


def test_auto_falls_back_when_runtimes_are_missing(run_copy: Path, monkeypatch, capsys) -> None:
    # as where it is absent
    monkeypatch.setitem(engines._RUNTIMES, "openvino", "openvino_is_not_installed")
    assert open_predictor(run_copy, "auto").engine.name in ("onnx", "torch")
    assert (
        "openvino needs openvino_is_not_installed: pip install 'histoclass[openvino]'"
        in capsys.readouterr().err
    )
    records = json.loads(
        next(RunDir(run_copy).engines.iterdir()).joinpath("parity.json").read_text()
    )
    assert set(records) == {"onnx"}  # nothing of openvino was tried
    monkeypatch.setitem(engines._RUNTIMES, "onnx", "onnxruntime_is_not_installed")
    assert open_predictor(run_copy, "auto").engine.name == "torch"


def test_a_conversion_that_disagrees_is_refused(run_copy: Path, tmp_path: Path) -> None:
    good = open_predictor(run_copy, "onnx")
    cache = ExportDir(good.source.parent)
    untrained = create_model(good.info.architecture, good.info.num_classes, pretrained=False)
    # a broken conversion in its place
    wrong = convert_run(untrained, good.info, tmp_path / "wrong")
    shutil.copy(wrong.model("onnx"), cache.model("onnx"))
    cache.parity.unlink()
    result = run_cli(
        "predict",
        str(run_copy),
        str(IMAGES[0]),
        "--engine",
        "onnx",
        "--out",
        str(run_copy / "p.csv"),
    )
    assert (
        result.returncode == 2
        and "agrees with PyTorch on" in result.stderr
        and "Traceback" not in result.stderr
    )
    # openvino reads the same broken conversion
    assert predict_auto(run_copy, tmp_path / "p.csv") == "torch"


def test_export_openvino_passes_its_parity_gate(run_copy: Path) -> None:
    result = run_cli("export", str(run_copy), "--format", "openvino")
    assert result.returncode == 0, result.stderr
    export = RunDir(run_copy).export
    assert (
        export.model("openvino").is_file()
        and export.model("openvino").with_suffix(".bin").is_file()
    )
    assert json.loads(export.parity.read_text())["openvino"]["passed"]
    openvino = openvino_probabilities(export.model("openvino"))
    assert np.abs(openvino["f32"] - load(run_copy).predict(IMAGES)).max() < 1e-3


@pytest.fixture()
def read_only_run(run_copy: Path, tmp_path: Path):
    """The run on a read-only bind mount, as a shared model folder is (mounting needs root: skipped
    elsewhere)."""
    mount = tmp_path / "read-only"
    mount.mkdir()
    steps = [
        ["mount", "--bind", str(run_copy), str(mount)],
        ["mount", "-o", "remount,bind,ro", str(mount)],
    ]
    if any(subprocess.run(step, capture_output=True).returncode for step in steps):
        subprocess.run(["umount", str(mount)], capture_output=True)
        pytest.skip("read-only bind mounts need root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_run_on_read_only_storage_predicts_on_pytorch_and_writers_say_where_to_go(
    read_only_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "predictions.csv"
    predicted = run_cli(
        "predict", str(read_only_run), str(BLOOD_TEST), "--out", str(out), "--no-tta"
    )
    assert predicted.returncode == 0 and "Traceback" not in predicted.stderr, predicted.stderr[
        -2000:
    ]
    assert "engine: torch" in predicted.stderr and "read-only" in predicted.stderr
    assert len(out.read_text().splitlines()) == 72
    for args in (
        ["evaluate", str(read_only_run), "--data", str(BLOOD_TEST)],
        ["export", str(read_only_run), "--format", "onnx"],
        ["calibrate", str(read_only_run), "--data", str(BLOOD_TEST)],
    ):
        result = run_cli(*args)
        assert (
            result.returncode == 2
            and "read-only" in result.stderr
            and str(read_only_run) in result.stderr
        ), args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
