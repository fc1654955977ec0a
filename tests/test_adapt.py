"""adapt: a run adapted to another lab's cells, without labels (BatchNorm statistics) and with a few labelled
cells, as a new run directory that records its parent and leaves it unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import NO_AUDITS, TECOM, run_cli, run_cli_all
from histoclass.adaptation.batchnorm import batchnorm_layers, reestimate_batchnorm
from histoclass.adaptation.pseudo_labels import confident_per_class
from histoclass.data.images import load_resized
from histoclass.data.inputs import collect_inputs
from histoclass.models.serialization import load_model
from histoclass.runs import ModelInfo


def _digests(run: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()
    }


@pytest.fixture(scope="module")
def adapted(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The trained run adapted to the other lab without labels, and with 5 labelled cells a class."""
    before = _digests(trained_run)
    out = tmp_path_factory.mktemp("adapted")
    calls = [
        ["adapt", str(trained_run), "--data", str(TECOM), "--runs-dir", str(out), "--name", "bn"],
        [
            "adapt",
            str(trained_run),
            "--data",
            str(TECOM),
            "--shots",
            "5",
            "--epochs",
            "10",
            "--runs-dir",
            str(out),
            "--name",
            "shots",
        ],
    ]
    for result in run_cli_all(calls):
        assert result.returncode == 0, result.stderr[-3000:]
    assert _digests(trained_run) == before, "the parent run must not change"
    return out / "bn", out / "shots", before


def test_unlabelled_adaptation_writes_a_run_that_records_its_parent(
    adapted, trained_run: Path
) -> None:
    bn, _, _ = adapted
    info = ModelInfo.load(bn / "model.json")
    assert info.parent == str(trained_run.resolve())
    record = json.loads((bn / "adaptation.json").read_text())
    assert record["images"] == 299 and record["batchnorm"] and "shots" not in record
    parent_model, _ = load_model(trained_run)
    model, _ = load_model(bn)
    moved = [
        not torch.allclose(a.running_mean, b.running_mean)
        for a, b in zip(batchnorm_layers(parent_model), batchnorm_layers(model), strict=True)
    ]
    assert all(moved)
    weights = {
        k: v for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    assert all(torch.equal(v, parent_model.state_dict()[k]) for k, v in weights.items())


def test_batchnorm_statistics_are_the_new_images_own(trained_run: Path) -> None:
    """The first BatchNorm's running mean equals the mean of what reaches it on the new images."""
    model, info = load_model(trained_run)
    _, paths = collect_inputs([str(TECOM)])
    pixels = np.stack([load_resized(p, info.image_size) for p in paths[:48]])
    first = batchnorm_layers(model)[0]
    seen = []
    handle = first.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].mean(dim=(0, 2, 3)))
    )
    reestimate_batchnorm(model, [pixels[:24], pixels[24:]], info.mean, info.std)
    handle.remove()
    torch.testing.assert_close(first.running_mean, torch.stack(seen).mean(0), rtol=1e-4, atol=1e-5)


def test_few_shot_adaptation_scores_the_cells_it_did_not_see(adapted) -> None:
    _, shots, _ = adapted
    record = json.loads((shots / "adaptation.json").read_text())
    assert record["labelled_images"] == 20 and record["rest"]["images"] == 299 - 20
    assert record["rest"]["balanced_accuracy"] > 0.4  # chance: 0.25
    # the second fine-tuning's pseudo-labelled images: at most twice the draw, a class at a time
    assert 0 < record["pseudo_labelled"] <= 2 * 5 * 4 and record["pseudo_labels"]
    info = ModelInfo.load(shots / "model.json")
    assert info.calibration.fitted_on == "adapt --shots" and info.calibration.has_sets


def test_an_adapted_run_evaluates_and_exports_like_any_run(adapted, tmp_path: Path) -> None:
    bn, _, _ = adapted
    calls = [
        # the audits (copies among these cells, of the training cells) are tested in test_audit
        [
            "evaluate",
            str(bn),
            "--data",
            str(TECOM),
            "--no-tta",
            *NO_AUDITS,
        ],
        ["export", str(bn), "--format", "onnx", "--images", "32"],
    ]
    evaluated, exported = run_cli_all(calls)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert exported.returncode == 0, exported.stderr[-2000:]
    metrics = json.loads((bn / "eval" / "wbc_tecom-no-tta" / "metrics.json").read_text())
    assert metrics["shift"]["verdict"] is None, (
        "adapted to these cells, it no longer calls them unlike"
    )
    assert json.loads((bn / "export" / "parity.json").read_text())


def test_bad_adapt_input_is_one_line(trained_run: Path, tmp_path: Path) -> None:
    cases = [
        (
            ["adapt", str(trained_run), "--data", str(tmp_path / "missing")],
            "no such file or folder",
        ),
        (["adapt", str(tmp_path), "--data", str(TECOM)], "not a finished run directory"),
        (["adapt", str(trained_run), "--data", str(TECOM), "--shots", "50"], "--shots 50"),
    ]
    for args, message in cases:
        result = run_cli(*args, "--runs-dir", str(tmp_path / "out"))
        assert result.returncode == 2 and message in result.stderr, result.stderr[-1000:]
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_pseudo_labels_are_the_surest_few_of_each_predicted_class() -> None:
    probabilities = np.array(
        [[0.9, 0.1], [0.6, 0.4], [np.nan, np.nan], [0.2, 0.8], [0.95, 0.05], [0.4, 0.6]]
    )
    assert confident_per_class(probabilities, 2).tolist() == [0, 3, 4, 5]
    assert confident_per_class(probabilities, 1).tolist() == [3, 4]
