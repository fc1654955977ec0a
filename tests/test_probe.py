"""Probes on real blood-cell images: heads trained on cached embeddings of the shared ImageNet
Lite0, the cache reused by a second run, and a probe run that evaluates, predicts, exports and
serves like any run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import BLOOD_TEST, LITE0, NO_AUDITS, probe, run_cli, val_accuracy
from histoclass.calibration.temperature import fit_temperature
from histoclass.inference.embedder import Embedder
from histoclass.inference.engines.torch_engine import TorchEngine
from histoclass.runs import ModelInfo, RunDir
from histoclass.runs.config_file import read_run_config
from histoclass.runs.records import split_records
from histoclass.training.finish import validation_logits

CHANCE = 0.25


def test_linear_probe_learns_and_keeps_only_the_head_in_checkpoints(probe_run: Path) -> None:
    assert val_accuracy(probe_run) > CHANCE + 0.2
    checkpoint = torch.load(
        probe_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )
    assert checkpoint["state_dict"] and all(
        k.startswith("model.head.") for k in checkpoint["state_dict"]
    )
    # the whole classifier, backbone untouched
    saved = load_file(str(probe_run / "model.safetensors"))
    lite0 = load_file(str(LITE0))
    assert torch.equal(saved["backbone.conv_stem.weight"], lite0["conv_stem.weight"])
    config = (probe_run / "config.yaml").read_text()
    assert "probe: linear" in config and "head: linear" in config
    # the head steps over probe_batch embeddings (8 views of each training image) at a time
    run = RunDir(probe_run)
    samples = 8 * len(split_records(run, "train"))
    steps_per_epoch = -(-samples // read_run_config(run).train.probe_batch)
    last = torch.load(
        probe_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert last["global_step"] == steps_per_epoch * (last["epoch"] + 1)


def test_a_probe_is_calibrated_as_its_saved_model_answers(probe_run: Path) -> None:
    """Calibrated on cached embeddings of the validation images' test-time views: the temperature
    the saved model's own answers on those images give, within a few per cent."""
    run = RunDir(probe_run)
    logits, labels = validation_logits(run, split_records(run, "val"))
    stored = ModelInfo.load(run.model_info).calibration.temperature
    assert fit_temperature(logits, labels) == pytest.approx(stored, rel=0.05)


#: In a fresh interpreter: OpenVINO loaded into a pytest worker beside the in-process trainings made a
#: later subprocess call crash that worker (test_engines.py says the same).
OPENVINO_FEATURES = """
import json, sys
from pathlib import Path
import numpy as np
from histoclass.data.images import load_resized
from histoclass.embeddings.extractors import OPENVINO_FROM, create_extractor
extractor = create_extractor("tf_efficientnet_lite0", sys.argv[1], 64, "pooled")
below, above = (extractor.engine(passes=OPENVINO_FROM + k) for k in (-1, 0))
pixels = np.stack([load_resized(Path(p), 64) for p in json.loads(sys.argv[2])])
expected, converted = below.logits(pixels), above.logits(pixels)
cosine = (expected * converted).sum(1) / (
    np.linalg.norm(expected, axis=1) * np.linalg.norm(converted, axis=1)
)
print(json.dumps([below.name, above.name, float(cosine.min()), list(converted.shape)]))
"""


def test_large_sets_are_embedded_with_openvino_with_the_same_features() -> None:
    """From OPENVINO_FROM image passes a CPU embeds with the module converted to OpenVINO; fewer stay
    with PyTorch; both give the same features."""
    images = json.dumps([str(p) for p in sorted(BLOOD_TEST.rglob("*.jpeg"))[:16]])
    done = subprocess.run(
        [sys.executable, "-c", OPENVINO_FEATURES, str(LITE0), images],
        capture_output=True,
        text=True,
        check=True,
    )
    below, above, cosine, shape = json.loads(done.stdout.splitlines()[-1])
    assert (below, above) == ("torch", "openvino")
    # f32 on both (bf16 on both where the CPU computes it natively)
    assert cosine > 0.999 and shape == [16, 1280]


def test_a_second_probe_reads_the_cache_instead_of_the_backbone(
    probe_run, blood_subset, runs_dir, monkeypatch
):
    """Neither for the training images nor for the calibration's test-time views of the validation
    images: the backbone never runs (embedded by any engine, or through the inference path)."""
    calls = []
    for owner, name in ((Embedder, "embed_pixels"), (TorchEngine, "logits")):
        original = getattr(owner, name)
        monkeypatch.setattr(
            owner,
            name,
            lambda self, *a, _original=original, **k: calls.append(1) or _original(self, *a, **k),
        )
    again = probe(blood_subset, runs_dir, "probe-again", "linear", views=True)
    assert calls == []
    first = json.loads((probe_run / "metrics.json").read_text())
    second = json.loads((again / "metrics.json").read_text())
    assert second["val_accuracy"] == first["val_accuracy"]


def test_a_probe_run_evaluates_predicts_exports_and_serves(probe_run: Path, tmp_path: Path) -> None:
    from test_serve import start_server, upload

    evaluated = run_cli(
        "evaluate", str(probe_run), "--data", str(BLOOD_TEST), "--engine", "torch", *NO_AUDITS
    )
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((probe_run / "eval" / "test_simple" / "metrics.json").read_text())
    # 71 unseen source cells, ImageNet features at 96 px, 480 training images: above chance, not good (the
    # full-data probe scores 0.73 here; docs/benchmarks.md)
    assert metrics["accuracy"] > CHANCE + 0.08
    exported = run_cli("export", str(probe_run))
    assert exported.returncode == 0, exported.stderr
    parity = json.loads((probe_run / "export" / "parity.json").read_text())["onnx"]
    assert parity["passed"] and parity["top1_agreement"] >= 0.995
    images = sorted(BLOOD_TEST.rglob("*.jpeg"))[::6]
    out = tmp_path / "p.csv"
    onnx = probe_run / "export" / "model.onnx"
    assert run_cli("predict", str(onnx), *map(str, images), "--out", str(out)).returncode == 0
    with open(out, newline="") as handle:
        expected = {Path(row["id"]).name: row["label"] for row in csv.DictReader(handle)}
    process, url = start_server(probe_run)
    try:
        response = upload(url, [(p.name, p.read_bytes()) for p in images])
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert response.status_code == 200
    assert {r["filename"]: r["label"] for r in response.json()["results"]} == expected


def test_knn_probe_stores_the_training_embeddings(blood_subset: Path, runs_dir: Path) -> None:
    run = probe(blood_subset, runs_dir, "probe-knn", "knn")
    assert val_accuracy(run) > CHANCE + 0.1
    bank = load_file(str(run / "model.safetensors"))["head.bank"]
    with open(run / "split.csv", newline="") as handle:
        train_images = sum(1 for row in csv.DictReader(handle) if row["split"] == "train")
    assert bank.shape[0] == train_images
    assert np.allclose(bank.norm(dim=1).numpy(), 1, atol=1e-4)
    exported = run_cli("export", str(run))
    assert exported.returncode == 0, exported.stderr
    assert (
        json.loads((run / "export" / "parity.json").read_text())["onnx"]["top1_agreement"] >= 0.995
    )


def test_embed_writes_every_format(probe_run: Path, tmp_path: Path) -> None:
    images = len(list(BLOOD_TEST.rglob("*.jpeg")))
    npz = run_cli("embed", str(probe_run), str(BLOOD_TEST), "--out", str(tmp_path / "e.npz"))
    assert npz.returncode == 0, npz.stderr
    data = np.load(tmp_path / "e.npz")
    assert data["features"].shape == (images, 1280) and len(set(data["labels"])) == 4
    views = run_cli(
        "embed", str(probe_run), str(BLOOD_TEST), "--out", str(tmp_path / "e.npy"), "--views", "all"
    )
    assert views.returncode == 0, views.stderr
    assert np.load(tmp_path / "e.npy").shape == (images, 8, 1280)
    assert len((tmp_path / "e.csv").read_text().splitlines()) == images + 1
    # same vectors, float16
    assert np.allclose(np.load(tmp_path / "e.npy")[:, 0], data["features"], atol=2e-2)
    if pytest.importorskip("pyarrow"):
        import pyarrow.parquet as pq

        run_cli("embed", str(probe_run), str(BLOOD_TEST), "--out", str(tmp_path / "e.parquet"))
        assert pq.read_table(tmp_path / "e.parquet").num_rows == images
    bad = run_cli("embed", str(probe_run), str(BLOOD_TEST), "--out", str(tmp_path / "e.txt"))
    assert bad.returncode == 2 and ".npz" in bad.stderr and "Traceback" not in bad.stderr
