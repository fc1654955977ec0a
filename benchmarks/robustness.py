"""A run on another lab's images: zero-shot, after unlabelled adaptation, after few-shot adaptation;
and how well the shift score tells other sources and other kinds of image from unseen images of the
training lab.

    python -m benchmarks.robustness --run runs/blood [--shots 1,5,10,20] [--draws 3] [--results
    robust.json] python -m benchmarks.robustness --row 128px-robust --results robust.json   # train
    the row first (quality.py)

The new source is ``../shared/data/wbc_tecom`` (299 cells of another lab); same-lab unseen cells are
``test_simple``. Few-shot rows draw K labelled cells a class (seeds 0..draws-1), fine-tune from the
run and score balanced accuracy on every other cell of the new source; the mean over draws is
printed. Other kinds: BreastMNIST test images and H&E tiles cut from the tissue of
``slides/small_HE.svs``. Nothing here is tuned on the new source: it is only scored.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmarks.quality import BLOOD, SHARED, train_row
from PIL import Image
from sklearn.metrics import roc_auc_score

from histoclass.config import AdaptConfig, EvaluateConfig
from histoclass.evaluation.job import evaluate

TECOM = SHARED / "data" / "wbc_tecom"
SLIDE = SHARED / "data" / "slides" / "small_HE.svs"
BREAST = SHARED / "data" / "breastmnist.npz"


def other_kinds(folder: Path, count: int = 100) -> Path:
    """BreastMNIST ultrasound test images and H&E tiles from the slide's tissue, as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(BREAST) as data:
        for i, image in enumerate(data["test_images"][:count]):
            Image.fromarray(image).save(folder / f"breast_{i}.png")
    with Image.open(SLIDE) as slide:
        slide = slide.convert("RGB")
        for i in range(count):  # the tissue lies in the middle third of the slide
            x, y = 760 + (i % 10) * 100, 1000 + (i // 10) * 190
            slide.crop((x, y, x + 128, y + 128)).save(folder / f"he_{i}.png")
    return folder


def _evaluate(run: Path, data: Path) -> dict:
    out = evaluate(EvaluateConfig(model=str(run), data=str(data), tta=True, overlap_check=False))
    metrics = json.loads((out / "metrics.json").read_text())
    return {key: metrics[key] for key in ("accuracy", "balanced_accuracy")} | {
        "shift": metrics.get("shift")
    }


def _shift_scores(run: Path, data: Path) -> np.ndarray:
    from histoclass.data.inputs import collect_inputs
    from histoclass.data.records import ImageRecords
    from histoclass.deploy.engines import open_predictor
    from histoclass.prediction.batch import run_predictions

    ids, paths = collect_inputs([str(data)])
    records = ImageRecords(ids=ids, labels=np.full(len(ids), -1), paths=paths)
    return run_predictions(open_predictor(run, "torch"), records).shift


def _auroc(same: np.ndarray, other: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(same)), np.ones(len(other))], np.r_[same, other]))


def _adapt(run: Path, out: Path, name: str, **options) -> Path:
    from histoclass.adaptation.job import adapt

    return adapt(
        AdaptConfig(run=str(run), data=str(TECOM), runs_dir=str(out), name=name, **options)
    ).root


def measure(
    run: Path, shots: list[int], draws: int, work: Path, pseudo_labels: bool = True
) -> dict:
    same = BLOOD / "test_simple"
    result = {"run": str(run), "pseudo_labels": pseudo_labels, "same_lab": _evaluate(run, same)}
    result["zero_shot"] = _evaluate(run, TECOM)
    scores = {name: _shift_scores(run, path) for name, path in (("same", same), ("tecom", TECOM))}
    scores["other_kinds"] = _shift_scores(run, other_kinds(work / "kinds"))
    result["shift_auroc"] = {
        "tecom_vs_same_lab": _auroc(scores["same"], scores["tecom"]),
        "other_kinds_vs_same_lab": _auroc(scores["same"], scores["other_kinds"]),
    }
    started = time.perf_counter()
    adapted = _adapt(run, work, "adabn")
    result["adabn"] = _evaluate(adapted, TECOM) | {
        "seconds": round(time.perf_counter() - started, 1)
    }
    result["shots"] = {}
    for k in shots:
        rows = []
        for seed in range(draws):
            folder = _adapt(
                run, work, f"shots-{k}-{seed}", shots=k, seed=seed, pseudo_labels=pseudo_labels
            )
            rows.append(
                json.loads((folder / "adaptation.json").read_text())["rest"]["balanced_accuracy"]
            )
        result["shots"][k] = {"balanced_accuracy": rows, "mean": float(np.mean(rows))}
    return result


def _print(result: dict) -> None:
    print(f"run {result['run']}")
    print(
        f"same lab (test_simple, TTA): balanced accuracy {result['same_lab']['balanced_accuracy']:.3f}"
    )
    print(
        f"new lab zero-shot:           balanced accuracy {result['zero_shot']['balanced_accuracy']:.3f}"
    )
    print(
        f"new lab after adapt (no labels): balanced accuracy {result['adabn']['balanced_accuracy']:.3f}"
    )
    for k, row in result["shots"].items():
        draws = ", ".join(f"{v:.3f}" for v in row["balanced_accuracy"])
        print(
            f"new lab, {k} labelled cells a class: balanced accuracy {row['mean']:.3f} (draws {draws})"
        )
    auroc = result["shift_auroc"]
    print(
        f"shift AUROC: new lab {auroc['tecom_vs_same_lab']:.3f}, other kinds "
        f"{auroc['other_kinds_vs_same_lab']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an existing run directory trained on bloodcells/train")
    parser.add_argument("--row", help="train this benchmarks.quality row first (blood)")
    parser.add_argument("--runs-dir", default="runs", help="where --row trains")
    parser.add_argument("--shots", default="1,5,10,20")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument(
        "--no-pseudo-labels",
        action="store_true",
        help="few-shot rows without the second, pseudo-labelled fine-tuning",
    )
    parser.add_argument("--results", help="append the result to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        run = (
            Path(args.run) if args.run else train_row("blood", args.row, 0, Path(args.runs_dir))[0]
        )
        shots = [int(k) for k in args.shots.split(",") if k]
        result = measure(run, shots, args.draws, work, not args.no_pseudo_labels)
        _print(result)
        if args.results:
            path = Path(args.results)
            previous = json.loads(path.read_text()) if path.is_file() else []
            path.write_text(json.dumps([*previous, result], indent=2) + "\n")


if __name__ == "__main__":
    main()
