"""Resume against an uninterrupted run, the case a user reported diverging: batch 8, 10 epochs,
killed after 4.

    python -m benchmarks.resume [--folder /tmp/resume-check]

Trains 124 real blood-cell images (Lite0, 48 px, plateau patience 1 so the learning rate drops during the run)
straight through, then again with SIGKILL during epoch 5 and ``--resume``; prints how many tensors of the two
final checkpoints differ, and both histories (validation loss and learning rate per epoch).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from histoclass.runs.history import read_history

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BLOOD = SHARED / "data" / "bloodcells" / "train"
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"


def _dataset(root: Path, per_class: int = 31) -> Path:
    for folder in sorted(BLOOD.iterdir()):
        files = sorted(folder.iterdir())
        (root / folder.name).mkdir(parents=True)
        for path in files[:: len(files) // per_class][:per_class]:
            (root / folder.name / path.name).symlink_to(path)
    return root


def _train(data: Path, runs: Path, name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "histoclass",
        "train",
        "--data",
        str(data),
        "--model",
        "tf_efficientnet_lite0",
        "--weights",
        str(WEIGHTS),
        "--image-size",
        "48",
        "--epochs",
        "10",
        "--phase1-epochs",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--accelerator",
        "cpu",
        "--runs-dir",
        str(runs),
        "--name",
        name,
        "--set",
        "train.early_stopping_patience=20",
        "--set",
        "train.lr_patience=1",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder", default="/tmp/resume-check")
    root = Path(parser.parse_args().folder)
    shutil.rmtree(root, ignore_errors=True)
    data = _dataset(root / "data")
    subprocess.run(_train(data, root, "straight"), capture_output=True, check=True)
    process = subprocess.Popen(
        _train(data, root, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    history, last = root / "killed" / "history.csv", root / "killed" / "checkpoints" / "last.ckpt"
    while not history.is_file() or len(read_history(history)) < 4:
        time.sleep(0.05)
    while not last.is_file() or last.stat().st_mtime < history.stat().st_mtime:
        time.sleep(0.01)  # epoch 4's checkpoint is on disk: kill during epoch 5
    process.send_signal(signal.SIGKILL)
    process.wait()
    subprocess.run(
        [sys.executable, "-m", "histoclass", "train", "--resume", str(root / "killed")],
        capture_output=True,
        check=True,
    )
    states = [
        torch.load(root / n / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for n in ("straight", "killed")
    ]
    differing = [key for key in states[0] if not torch.equal(states[0][key], states[1][key])]
    print(f"tensors that differ: {len(differing)} of {len(states[0])}")
    for name in ("straight", "killed"):
        rows = read_history(root / name / "history.csv")
        print(
            name,
            " ".join(f"{r['epoch']}:{float(r['val_loss']):.4f}@{float(r['lr']):g}" for r in rows),
        )


if __name__ == "__main__":
    main()
