"""The command line as a user meets it: help, check-data, config files, and one-line errors for bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from conftest import LITE0, blood_files, link_class_folders, quick_train, run_cli, run_cli_all
from histoclass.config import apply_overrides, build_config, load_yaml
from histoclass.errors import HistoclassError
from histoclass.models.factory import create_backbone
from histoclass.runs import RunDir


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_explains_every_verb_and_train_flag() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    for verb in ("train", "check-data", "evaluate", "predict", "compare"):
        assert verb in top.stdout
    train = run_cli("train", "--help")
    flags = [
        "--data",
        "--image-dir",
        "--model",
        "--pretrained",
        "--no-pretrained",
        "--weights",
        "--image-size",
        "--epochs",
        "--phase1-epochs",
        "--unfreeze-last",
        "--batch-size",
        "--lr",
        "--seed",
        "--val-fraction",
        "--group-by",
        "--name",
        "--runs-dir",
        "--config",
        "--set",
        "--devices",
    ]
    for flag in flags:
        assert flag in train.stdout, flag


def test_check_data_reports_bad_files(blood_with_bad_files: Path) -> None:
    result = run_cli("check-data", str(blood_with_bad_files))
    assert result.returncode == 0, result.stderr
    for expected in (
        "EOSINOPHIL",
        "150",
        "320x240",
        "_bad_truncated.jpeg",
        "_bad_empty.jpeg",
        "_bad_text.jpeg",
    ):
        assert expected in result.stderr


def test_config_file_flags_and_set_override_in_order(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text(
        "data:\n  image_size: 64\n  batch_size: 8\ntrain:\n  lr: 0.01\n"
    )
    values = apply_overrides(load_yaml(tmp_path / "cfg.yaml"), {"data.batch_size": 16})
    config = build_config(
        apply_overrides(
            values, ["train.lr=5e-4", "augment.preset=keras", "train.unfreeze_last=all"]
        )
    )
    assert (config.data.image_size, config.data.batch_size, config.train.lr) == (64, 16, 5e-4)
    assert config.augment.rotation == 20 and config.augment.hflip and not config.augment.vflip
    assert config.train.unfreeze_last == "all" and config.train.phase1_epochs == 1
    with pytest.raises(HistoclassError, match=r"train\.lr: Input should be greater than 0"):
        build_config(apply_overrides({}, ["train.lr=-1"]))
    with pytest.raises(HistoclassError, match="section.key=value"):
        apply_overrides({}, ["lr"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_class_folders(tmp_path_factory.mktemp("tiny") / "data", blood_files(6))


def test_bad_inputs_give_one_clear_line(tmp_path: Path, tiny: Path) -> None:
    common = [
        "--runs-dir",
        str(tmp_path / "runs"),
        "--no-pretrained",
        "--image-size",
        "32",
        "--epochs",
        "1",
    ]
    empty = tmp_path / "empty"
    shutil.copytree(tiny, empty, symlinks=True)
    (empty / "BASOPHIL").mkdir()
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as handle:
        csv.writer(handle).writerows([["image", "label"], ["a", "x"]])
    cases = [
        (["--data", str(tmp_path / "missing")], ["no such file or folder"]),
        (["--data", str(empty)], ["BASOPHIL", "has no images"]),
        (["--data", str(labels), "--image-dir", str(tiny)], ["no column 'id'", "--id-column"]),
        (["--data", str(tiny), "--model", "resnet5O"], ["unknown model"]),
        (["--data", str(tiny), "--set", "data.val_fraction=2"], ["val_fraction"]),
        (["--data", str(tiny), "--weights", "nope.pth"], ["--weights"]),
        (
            ["--data", str(tiny), "--stain-normalize", "macenko"],
            ["--stain-target", "both or neither"],
        ),
        (["--data", str(tiny), "--progressive-resize", "32"], ["must be below the image size 32"]),
    ]
    results = run_cli_all([["train", *args, *common] for args, _ in cases])
    for (_, expected), result in zip(cases, results, strict=True):
        assert_one_line_error(result, *expected)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_offline_pretrained_fails_fast_naming_the_fixes(tmp_path: Path, tiny: Path) -> None:
    from histoclass.models.hub import hub_reachable as _hub_reachable

    if _hub_reachable("huggingface.co"):
        pytest.skip("the model hub is reachable here: the offline path cannot be shown")
    result = run_cli(
        "train",
        "--data",
        str(tiny),
        "--model",
        "resnet18",
        "--runs-dir",
        str(tmp_path),
        "--epochs",
        "1",
    )
    assert_one_line_error(result, "--weights", "--no-pretrained")


def test_cli_train_end_to_end_with_weights_file(tmp_path: Path, tiny: Path) -> None:
    result = run_cli(*quick_train(tiny, tmp_path / "runs", "cli", epochs=2, batch_size=8))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Split (images per class)" in result.stderr
    # --cache auto: these few images are decoded once into memory, and that is said
    assert "decoded once into memory" in " ".join(result.stderr.split())
    # The default recipe trains the whole backbone in phase 2: the stem moves as well as the last block.
    start = create_backbone("tf_efficientnet_lite0", weights=str(LITE0)).module.state_dict()
    last = torch.load(RunDir(tmp_path / "runs" / "cli").last_checkpoint, weights_only=True)[
        "state_dict"
    ]
    for key in ("conv_stem.weight", "conv_head.weight"):
        assert not torch.equal(last[f"model.backbone.{key}"], start[key]), key


def test_every_verb_takes_config_and_set_and_shows_its_defaults(tmp_path: Path) -> None:
    from histoclass.verbs import VERBS

    def positional(spec) -> list[str]:
        return [
            "x"
            for f in spec.config.model_fields.values()
            if (f.json_schema_extra or {}).get("cli") == "argument"
        ]

    shown = run_cli_all([[verb, "--help"] for verb in VERBS])
    bad = run_cli_all(
        [[verb, *positional(spec), "--set", "no_such_key=1"] for verb, spec in VERBS.items()]
    )
    for verb, help_, refused in zip(VERBS, shown, bad, strict=True):
        assert help_.returncode == 0, verb
        assert "--config" in help_.stdout and "--set" in help_.stdout, verb
        if verb not in ("check-data", "compare"):
            assert "[default:" in help_.stdout, verb
        assert_one_line_error(refused, "no_such_key")


def test_config_file_works_for_other_verbs(tmp_path: Path, tiny: Path) -> None:
    (tmp_path / "check.yaml").write_text(f"data: {tiny}\n")
    checked = run_cli("check-data", str(tiny), "--config", str(tmp_path / "check.yaml"))
    assert checked.returncode == 0 and "EOSINOPHIL" in checked.stderr
    (tmp_path / "serve.yaml").write_text("port: 70000\n")
    assert_one_line_error(
        run_cli("serve", "model", "--config", str(tmp_path / "serve.yaml")), "port"
    )
    assert_one_line_error(run_cli("predict", "m", "x", "--batch-size", "0"), "batch_size")


def test_a_split_that_leaves_a_class_without_training_images_is_refused(tmp_path: Path) -> None:
    """20 classes of one real image each beside two full ones: some single images land in validation only."""
    files = blood_files(20)
    singles = {f"single_{i}": [files["MONOCYTE"][i]] for i in range(20)}
    data = link_class_folders(tmp_path / "data", {"EOSINOPHIL": files["EOSINOPHIL"], **singles})
    result = run_cli(
        "train",
        "--data",
        str(data),
        "--weights",
        str(LITE0),
        "--image-size",
        "32",
        "--runs-dir",
        str(tmp_path / "runs"),
    )
    assert result.returncode == 2 and "without a training image" in result.stderr, result.stderr[
        -2000:
    ]
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_every_verb_is_a_python_function_too() -> None:
    import histoclass
    from histoclass.verbs import VERBS

    assert {name.replace("-", "_") for name in VERBS} <= set(histoclass.__all__)
