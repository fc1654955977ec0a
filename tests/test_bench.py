"""The speed benchmark and the decoded cache it measures, on real images (CPU smoke size)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import blood_files, link_class_folders, run_cli, run_cli_process
from histoclass.benchmark.job import RATIOS, STAGES
from histoclass.benchmark.stages import PAIRED
from histoclass.config import DataConfig
from histoclass.data.cache import decoded_cache
from histoclass.data.dataset import ImageDataset
from histoclass.data.sources import read_source


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_class_folders(tmp_path_factory.mktemp("bench") / "blood", blood_files(40))


def test_bench_measures_every_stage_and_writes_json_and_markdown(
    small_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    # its own process, as a user runs it: it forks loader processes and loads every runtime at once
    done = run_cli_process(
        "bench",
        "--data",
        str(small_folder),
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--warmup",
        "1",
        "--steps",
        "12",
        "--workers",
        "1",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "bench.json").read_text())
    stages = result["stages"]
    assert list(stages) == list(STAGES)
    ran = {name for name, row in stages.items() if "skipped" not in row}
    # only bf16, on CPUs without it
    assert set(STAGES) - ran <= {"engine_torch_bf16", "engine_openvino_bf16"}
    for name in ran:
        assert stages[name]["images_per_s"] > 0, name
        # a Python process with torch loaded, at least
        assert stages[name]["host_peak_mib"] > 50, name
    # float engines agree on real images
    for name in ("engine_torch_fp32", "engine_onnx", "engine_openvino_f32"):
        assert stages[name]["top1_agreement"] >= 0.99, (name, stages[name])
    assert set(result["ratios"]) == {name for name, (a, b) in RATIOS.items() if {a, b} <= ran}
    # training against the ceiling steps interleaved with its own, not the ceiling stage run alone
    for ratio, stage in (
        ("train / ceiling", "ours_train"),
        ("train cached / ceiling", "ours_train_cache"),
    ):
        row = stages[stage]
        # 12 batches after the warm-up: more than the 10 of one epoch (152 training images, batches of 16)
        assert row["timed_batches"] == 12
        assert row[PAIRED] > 0
        assert result["ratios"][ratio] == pytest.approx(row["images_per_s"] / row[PAIRED], rel=0.01)
    table = (out / "bench.md").read_text()
    assert (
        "train / naive" in table
        and "| ours_train |" in table
        and "| ratio | value |" in done.stdout
    )
    assert "onnx / torch_fp32" in table and "| engine_openvino_f32 |" in table


def test_a_missing_engine_runtime_is_a_skipped_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from histoclass.benchmark.engine_stages import EngineBench, StageSkipped

    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "openvino" else found(name, *a),
    )
    with pytest.raises(
        StageSkipped, match=r"openvino needs openvino: pip install 'histoclass\[openvino\]'"
    ):
        EngineBench(tmp_path, tmp_path, np.zeros((1, 8, 8, 3), np.uint8)).stage(
            "engine_openvino_f32", None, None
        )


def test_bench_rejects_bad_input_in_one_line(small_folder: Path, tmp_path: Path) -> None:
    for args, words in (
        (["--data", str(tmp_path / "missing")], "not a folder"),
        (["--data", str(small_folder), "--stages", "warp_drive"], "unknown warp_drive"),
        (["--data", str(small_folder), "--cache", "gpu"], "not ram or disk"),
    ):
        done = run_cli("bench", *args, "--out", str(tmp_path / "out"))
        assert (
            done.returncode == 2
            and words in done.stderr
            and len(done.stderr.strip().splitlines()) == 1
        ), args
    assert not (tmp_path / "out").exists()


def test_disk_cache_is_built_once_reused_and_invalidated(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOCLASS_CACHE", str(tmp_path / "cache"))
    records = read_source(str(small_folder), DataConfig(path=str(small_folder))).splits["all"]
    first = decoded_cache(records, 48, "disk")
    files = list((tmp_path / "cache" / "decoded").iterdir())
    assert (
        len(files) == 1 and files[0].suffix == ".npy" and first.shape == (len(records), 48, 48, 3)
    )
    for i in (0, 37, len(records) - 1):
        assert np.array_equal(first[i], records.load(i, 48))
    built = files[0].stat().st_mtime_ns
    assert (
        np.array_equal(decoded_cache(records, 48, "disk"), first)
        and files[0].stat().st_mtime_ns == built
    )
    # A changed image (new modification time) is a new cache, never stale pixels.
    target = Path(os.path.realpath(records.paths[0]))
    copy = tmp_path / "changed" / records.ids[0]
    copy.parent.mkdir(parents=True)
    copy.write_bytes(target.read_bytes())
    changed = records.subset(range(len(records)))
    changed.paths[0] = copy
    decoded_cache(changed, 48, "disk")
    assert len(list((tmp_path / "cache" / "decoded").iterdir())) == 2


def test_cached_and_decoded_batches_are_identical_in_any_order(small_folder: Path) -> None:
    records = read_source(str(small_folder), DataConfig(path=str(small_folder))).splits["all"]
    plain = ImageDataset(records, 40)
    cached = ImageDataset(records, 40, decoded_cache(records, 40, "ram"))
    order = [91, 3, 150, 4, 77, 0]
    a, b = plain.__getitems__(order), cached.__getitems__(order)
    assert np.array_equal(a[0].numpy(), b[0].numpy()) and a[2].tolist() == b[2].tolist() == order
    assert a[1].tolist() == [int(records.labels[i]) for i in order] and a[0].shape == (6, 3, 40, 40)


def test_auto_cache_keeps_in_memory_what_fits_and_says_why_otherwise() -> None:
    import psutil

    from histoclass.data.cache import RAM_SHARE, fitting_cache

    free = psutil.virtual_memory().available
    kind, reason = fitting_cache(10_000, 128)  # the README's recipe: 0.46 GiB
    assert kind == "ram" and "decoded once into memory" in reason
    # one image more than a quarter of the free memory holds at 512 px, on each of 2 processes
    images = int(RAM_SHARE * free / (2 * 512 * 512 * 3)) + 1
    kind, reason = fitting_cache(images, 512, copies=2)
    assert kind == "none" and "--cache disk" in reason and "every epoch" in reason
    assert fitting_cache(images, 512, copies=1)[0] == "ram"  # one process: half of that
