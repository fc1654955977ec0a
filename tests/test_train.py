"""Real training on real blood-cell images: the run directory, transfer learning, two phases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import CLASSES, LITE0, small_config, val_accuracy
from histoclass.config import build_config
from histoclass.inference.predictor import load
from histoclass.runs import RunDir, create_run_dir
from histoclass.runs.history import HISTORY_COLUMNS, read_history

RUN_FILES = [
    "config.yaml",
    "labels.txt",
    "skipped_files.txt",
    "checkpoints/best.ckpt",
    "checkpoints/last.ckpt",
    "model.safetensors",
    "model.json",
    "history.csv",
    "metrics.json",
    "plots/curves.png",
]


def test_run_directory_holds_everything(trained_run: Path) -> None:
    for name in RUN_FILES:
        assert (trained_run / name).is_file(), name
    assert any((trained_run / "tensorboard").iterdir())
    assert (trained_run / "labels.txt").read_text().split() == CLASSES
    info = json.loads((trained_run / "model.json").read_text())
    assert info["architecture"] == "tf_efficientnet_lite0" and info["mean"] == [0.5, 0.5, 0.5]
    rows = read_history(trained_run / "history.csv")
    assert list(rows[0]) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [r["phase"] for r in rows] == ["1", "2", "2", "2", "2"]


def test_training_beats_chance_clearly(trained_run: Path) -> None:
    assert val_accuracy(trained_run) > 0.5  # chance is 0.25 for 4 balanced classes


def test_bad_files_are_listed_and_left_out(trained_run: Path) -> None:
    skipped = (trained_run / "skipped_files.txt").read_text().splitlines()
    assert sorted(line.split("\t")[1].split("/")[-1] for line in skipped) == [
        "_bad_empty.jpeg",
        "_bad_text.jpeg",
        "_bad_truncated.jpeg",
    ]


def test_resolved_config_reproduces_the_run(trained_run: Path) -> None:
    config = build_config(yaml.safe_load((trained_run / "config.yaml").read_text()))
    assert config.run.name == trained_run.name
    assert config.train.phase1_epochs == 1 and config.augment.vflip and config.augment.rot90


@pytest.mark.slow
def test_pretrained_beats_scratch(trained_run: Path, scratch_run: Path) -> None:
    assert val_accuracy(trained_run) > val_accuracy(scratch_run) + 0.1


def test_saved_model_reproduces_validation_accuracy(trained_run: Path) -> None:
    """The best weights, run through the inference path on the recorded validation ids, give metrics.json."""
    with open(trained_run / "split.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    val = [r for r in rows if r["split"] == "val"]
    assert val and {r["split"] for r in rows} == {"train", "val"}
    root = Path(yaml.safe_load((trained_run / "config.yaml").read_text())["data"]["path"])
    probabilities = load(trained_run).predict([root / r["id"] for r in val])
    accuracy = float(
        np.mean(
            [CLASSES[k] == r["label"] for k, r in zip(probabilities.argmax(1), val, strict=True)]
        )
    )
    assert abs(accuracy - val_accuracy(trained_run)) < 1e-6


def test_existing_run_name_is_never_overwritten(tmp_path: Path) -> None:
    first = create_run_dir(tmp_path, "exp")
    (first.root / "keep.txt").write_text("x")
    second = create_run_dir(tmp_path, "exp")
    assert second.root.name == "exp-2" and (first.root / "keep.txt").read_text() == "x"


class InputSides(L.Callback):
    """The sides of the batches the model sees, by stage and epoch (a hook on the trained and the
    validated weights)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], set[int]] = {}

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        def record(_, args) -> None:
            stage = "train" if trainer.training else "val"
            self.seen.setdefault((stage, trainer.current_epoch), set()).add(args[0].shape[-1])

        for model in {id(m): m for m in (module.model, module.evaluated)}.values():
            model.register_forward_pre_hook(record)


def test_the_loop_keeps_frozen_blocks_saves_ema_weights_and_resizes_progressively(
    blood_subset: Path, tmp_path: Path
) -> None:
    """With --unfreeze-last 3 the stem keeps its ImageNet weights and BatchNorm statistics (frozen,
    in inference mode) while the last block moves; with EMA on, the saved model is the averaged
    weights, not the raw ones; with --progressive-resize the model trains on each epoch's side (a
    third of the epochs at the start, a third halfway, the rest at full size) and is validated at
    full size, as every later use sees it."""
    from histoclass.models.factory import create_backbone
    from histoclass.training.callbacks import AtomicCheckpointIO
    from histoclass.training.job import train

    values = small_config(
        blood_subset, tmp_path, "ema", epochs=3, ema=0.9, unfreeze_last=3, progressive_resize=16
    )
    values["data"]["image_size"] = 32
    sides = InputSides()
    run = RunDir(train(build_config(values), [sides]))
    assert {e: sides.seen[("train", e)] for e in range(3)} == {0: {16}, 1: {24}, 2: {32}}
    validated = {side for (stage, _), seen in sides.seen.items() if stage == "val" for side in seen}
    assert validated == {32}
    saved = load_file(str(run.weights))
    start = create_backbone("tf_efficientnet_lite0", weights=str(LITE0)).module.state_dict()
    for key in ("conv_stem.weight", "bn1.running_mean"):
        assert torch.equal(saved[f"backbone.{key}"], start[key]), key
    assert not torch.equal(saved["backbone.conv_head.weight"], start["conv_head.weight"])
    state = AtomicCheckpointIO().load_checkpoint(run.best_checkpoint)["state_dict"]
    averaged = {
        key.removeprefix("ema.module."): value
        for key, value in state.items()
        if key.startswith("ema.module.")
    }
    trained = {
        key.removeprefix("model."): value
        for key, value in state.items()
        if key.startswith("model.")
    }
    assert saved.keys() == averaged.keys()
    assert all(torch.equal(saved[key], averaged[key]) for key in saved)
    assert any(not torch.equal(saved[key], trained[key]) for key in saved)  # not the raw weights
