"""Fixtures that build small real datasets from ../shared and train small real models once per session."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

# pytest-xdist's workers share the cores: each computes with its share (set before numpy and torch start)
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(workers))))

import numpy as np
import pytest

from histoclass.config import build_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BLOOD = SHARED / "data" / "bloodcells" / "train"
BLOOD_TEST = SHARED / "data" / "bloodcells" / "test_simple"
BREAST = SHARED / "data" / "breastmnist.npz"
#: Another lab's white blood cells (other stain, microscope, framing): the new-source development set.
TECOM = SHARED / "data" / "wbc_tecom"
SLIDE = SHARED / "data" / "slides" / "small_HE.svs"
LITE0 = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
CLASSES = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]
#: evaluate's flags for a test of something else: no audits (copies among the images, or of the training
#: images; test_audit tests them).
NO_AUDITS = ["--no-overlap-check", "--group-by", "none"]
#: Class + source image: the augmented copies of one blood-cell photo form one group.
BLOOD_GROUPS = r"^([^/]+/_\d+)_"


def pytest_configure(config: pytest.Config) -> None:
    if not BLOOD.is_dir():
        raise pytest.UsageError(
            f"the shared data is missing: expected {BLOOD} (../shared beside the checkout)"
        )


def blood_files(per_class: int, offset: int = 0) -> dict[str, list[Path]]:
    """``per_class`` real images per class, spread evenly over each class folder (many source images)."""
    chosen = {}
    for name in CLASSES:
        files = sorted((BLOOD / name).iterdir())
        step = max(1, len(files) // per_class)
        chosen[name] = files[offset::step][:per_class]
    return chosen


def link_class_folders(target: Path, files: dict[str, list[Path]]) -> Path:
    """A class-folder dataset of symlinks to the shared images (nothing copied)."""
    for name, paths in files.items():
        (target / name).mkdir(parents=True, exist_ok=True)
        for path in paths:
            (target / name / path.name).symlink_to(path)
    return target


def quick_train(data: Path, runs: Path, name: str, *extra: str, **flags) -> list[str]:
    """``histoclass train`` arguments for a seconds-long run of the shared Lite0 (32 px, 1 epoch, no
    loader workers); ``flags`` (``image_size=48``) replace those, ``extra`` arguments follow."""
    values = {"image_size": 32, "epochs": 1, "phase1_epochs": 1, "workers": 0} | flags
    values |= {"runs_dir": runs, "name": name}
    words = [[f"--{key.replace('_', '-')}", str(value)] for key, value in values.items()]
    start = [
        "train",
        "--data",
        str(data),
        "--model",
        "tf_efficientnet_lite0",
        "--weights",
        str(LITE0),
    ]
    return [*start, *(word for pair in words for word in pair), *extra]


def run_cli_all(
    calls: list[list[str]], env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess]:
    """Several ``histoclass`` commands, one after another; with ``env``, all in one fresh process
    (its imports paid once)."""
    if not env:
        return [run_cli(*args) for args in calls]
    script = (
        "import json, sys; from conftest import run_cli; "
        "print(json.dumps([vars(run_cli(*c)) for c in json.loads(sys.argv[1])]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(calls)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).parent,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [
        subprocess.CompletedProcess(**fields) for fields in json.loads(done.stdout.splitlines()[-1])
    ]


def run_cli_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``histoclass ARGS`` in a fresh process: for what a process is part of (Lightning's DDP
    launcher starts the command again, libraries read ``env`` at import)."""
    command = [sys.executable, "-m", "histoclass", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})}
    )


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``histoclass ARGS`` as a user would: the command line's own entry point, its exit status and both
    streams, in this process (a fresh interpreter adds seconds of imports and tests nothing more; tests of
    signals, imports, servers and DDP start their own). ``env``: variables added to ours, read at import by
    some libraries (the Hugging Face hub's offline switch), so these commands run in a fresh process."""
    if env:
        return run_cli_process(*args, env=env)
    from histoclass.cli import main

    out, err, status = io.StringIO(), io.StringIO(), 0
    saved = sys.argv, Path.cwd()
    try:
        sys.argv = ["histoclass", *args]
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exit:
                status = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
            except BaseException:  # what the interpreter would print before exiting with 1
                traceback.print_exc()
                status = 1
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
    return subprocess.CompletedProcess(
        ["histoclass", *args], status, out.getvalue(), err.getvalue()
    )


def once(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Path]) -> Path:
    """``make(folder)`` run once per test run: with pytest-xdist, by whichever worker asks first while
    the others wait for it and share its result (a path)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(factory.mktemp(name))
    from filelock import FileLock

    # every worker's base folder lies in this run's one folder
    root = factory.getbasetemp().parent
    done = root / f"{name}.done"
    with FileLock(root / f"{name}.lock"):
        if not done.is_file():
            folder = root / name
            folder.mkdir(exist_ok=True)  # a worker that failed to make it may have left it
            done.write_text(str(make(folder)))
    return Path(done.read_text())


def own_copy(factory: pytest.TempPathFactory, run: Path) -> Path:
    """A test module's own copy of a shared run (runs can be moved): modules that write into it
    (exports, evaluations, calibrations) never meet, whichever worker runs them."""
    return shutil.copytree(run, factory.mktemp("run") / run.name, symlinks=True)


@pytest.fixture(scope="session")
def blood_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 real blood-cell images (150 a class) as class folders."""
    return once(
        tmp_path_factory, "blood", lambda d: link_class_folders(d / "blood", blood_files(150))
    )


def small_config(data: Path, runs: Path, name: str, **train) -> dict:
    """The settings every test training shares: 96 px, 5 epochs, group-aware split; the last 3
    blocks fine-tuned (every block, the default, costs 60% more time; the CLI's end-to-end run keeps
    the default)."""
    return {
        "data": {
            "path": str(data),
            "image_size": 96,
            "batch_size": 32,
            "group_by": BLOOD_GROUPS,
        },
        "model": {"name": "tf_efficientnet_lite0", "weights": str(LITE0)},
        "train": {"epochs": 5, "phase1_epochs": 1, "lr": 2e-3, "unfreeze_last": 3, **train},
        "run": {"name": name, "runs_dir": str(runs)},
    }


@pytest.fixture(scope="session")
def blood_with_bad_files(tmp_path_factory: pytest.TempPathFactory, blood_subset: Path) -> Path:
    """The subset plus a truncated JPEG, an empty file and a text file named .jpeg."""

    def make(folder: Path) -> Path:
        root = shutil.copytree(blood_subset, folder / "blood", symlinks=True)
        real = next((BLOOD / "MONOCYTE").iterdir()).read_bytes()
        (root / "MONOCYTE" / "_bad_truncated.jpeg").write_bytes(real[: len(real) // 3])
        (root / "NEUTROPHIL" / "_bad_empty.jpeg").write_bytes(b"")
        (root / "EOSINOPHIL" / "_bad_text.jpeg").write_text("this is not an image\n")
        return root

    return once(tmp_path_factory, "blood-bad", make)


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def shared_trained_run(
    blood_with_bad_files: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A real transfer-learning run (ImageNet EfficientNet-Lite0) on the subset with bad files in it."""
    from histoclass.training.job import train

    return once(
        tmp_path_factory,
        "trained",
        lambda d: train(build_config(small_config(blood_with_bad_files, d, "pretrained"))),
    )


@pytest.fixture(scope="module")
def trained_run(shared_trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the trained run."""
    return own_copy(tmp_path_factory, shared_trained_run)


@pytest.fixture(scope="session")
def scratch_run(blood_subset: Path, runs_dir: Path) -> Path:
    """The same training from random weights."""
    from histoclass.training.job import train

    values = small_config(blood_subset, runs_dir, "scratch")
    values["model"] = {"name": "tf_efficientnet_lite0", "pretrained": False}
    return train(build_config(values))


def probe(
    data: Path, runs: Path, name: str, kind: str, views: bool = False, framing: str = "field"
) -> Path:
    """A probe run (a head on cached embeddings of the shared Lite0): 40 epochs take seconds."""
    from histoclass.training.job import train

    values = small_config(data, runs, name, probe=kind, probe_views=views, epochs=40, lr=3e-3)
    values["data"] |= {"batch_size": 64, "framing": framing}
    return train(build_config(values))


@pytest.fixture(scope="session")
def shared_probe_run(blood_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linear probe on the subset, with flips and quarter turns embedded as views."""
    return once(
        tmp_path_factory,
        "probe",
        lambda d: probe(blood_subset, d, "probe-linear", "linear", views=True),
    )


@pytest.fixture(scope="module")
def probe_run(shared_probe_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the probe run."""
    return own_copy(tmp_path_factory, shared_probe_run)


def val_accuracy(run: Path) -> float:
    import json

    return float(json.loads((run / "metrics.json").read_text())["val_accuracy"])


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 distinct real blood-cell images, each copied 8-20 times with augmentation, truth.csv beside them."""
    from benchmarks.audit import distinct_sources
    from benchmarks.copies import make_copies

    return once(
        tmp_path_factory, "copies", lambda d: make_copies(distinct_sources(60), d / "copies")
    )


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Caches (decoded images, embeddings) of this test run go to a folder of its own, which
    pytest-xdist's workers share as concurrent jobs of a user share theirs."""
    os.environ["HISTOCLASS_CACHE"] = str(once(tmp_path_factory, "cache", lambda d: d))
