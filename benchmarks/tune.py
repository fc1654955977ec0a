"""What ``histoclass tune`` buys: a study on validation only, then its chosen config trained with
fresh seeds and scored on test once per seed.

    python -m benchmarks.tune --weights ../shared/weights/tf_efficientnet_lite0.in1k.safetensors --timeout 30m

BreastMNIST's official splits: the study sees train and val (its objective is the validation log loss); the
best trial's ``config.yaml`` is then trained with each of ``--seeds`` and evaluated on the test split with TTA
(the default). Prints the study's size and the mean ± sd of the test accuracy and AUC, to set against the
recipe rows of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from histoclass.runs import RunDir, StudyDir

BREAST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "breastmnist.npz"


def histoclass(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "histoclass", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(BREAST))
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--weights")
    parser.add_argument("--timeout", default="30m")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs-dir", default="runs/tune-benchmark")
    args = parser.parse_args()
    runs = Path(args.runs_dir)
    started = time.perf_counter()
    model = ["--model", args.model] + (["--weights", args.weights] if args.weights else [])
    histoclass(
        "tune",
        "--data",
        args.data,
        *model,
        "--timeout",
        args.timeout,
        "--study",
        "study",
        "--runs-dir",
        str(runs),
    )
    minutes = (time.perf_counter() - started) / 60
    study = StudyDir(runs / "tune-study")
    best = RunDir(study.best.resolve())
    scores = []
    for seed in args.seeds.split(","):
        name = f"chosen-seed{seed}"
        histoclass(
            "train",
            "--config",
            str(best.config),
            "--seed",
            seed,
            "--name",
            name,
            "--runs-dir",
            str(runs),
        )
        histoclass("evaluate", str(runs / name), "--data", args.data, "--split", "test")
        metrics = json.loads(
            (runs / name / "eval" / "breastmnist-test" / "metrics.json").read_text()
        )
        scores.append((metrics["accuracy"], metrics["roc_auc"]))
    trials = study.trials.read_text().splitlines()[1:]
    states = [row.split(",")[1] for row in trials]
    accuracy, auc = np.array(scores).T
    print(
        f"study: {len(trials)} trials in {minutes:.1f} min ({states.count('COMPLETE')} complete, "
        f"{states.count('PRUNED')} pruned); chosen: {best.root.name}"
    )
    print(
        f"test accuracy + TTA {accuracy.mean():.3f} ± {accuracy.std(ddof=1):.3f}, "
        f"AUC + TTA {auc.mean():.3f} ± {auc.std(ddof=1):.3f} (seeds {args.seeds}: "
        f"{', '.join(f'{a:.3f}/{u:.3f}' for a, u in scores)})"
    )


if __name__ == "__main__":
    main()
