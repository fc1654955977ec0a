"""Probe speed: the embedding pass against the predictor, the cache read, and a head trained on the cache.

    python -m benchmarks.probes --data ../shared/data/bloodcells/train --images 2000 [--image-size 96]

In one process, on the same images and model (EfficientNet-Lite0 with the shared ImageNet weights): images/s
of the embedding pass into an empty cache, of the same pass reading the cache, and of ``Predictor`` (what
predict and evaluate run, PyTorch engine) on backbone + head; then a linear probe trained for exactly
``--epochs`` epochs on every image's cached embedding, timed by the run's own epoch clock (``history.csv``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from histoclass.config import build_config
from histoclass.data.sources import read_source
from histoclass.embeddings.compute import embed_records
from histoclass.embeddings.extractors import backbone_extractor
from histoclass.inference.engines.torch_engine import TorchEngine
from histoclass.inference.predictor import Predictor
from histoclass.models.factory import Classifier, create_backbone
from histoclass.models.heads import create_head
from histoclass.runs import ModelInfo
from histoclass.runs.history import read_history
from histoclass.training.job import train

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"


def _rate(images: int, started: float) -> float:
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(SHARED / "data" / "bloodcells" / "train"))
    parser.add_argument("--images", type=int, default=2000, help="images timed for the passes")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    os.environ["HISTOCLASS_CACHE"] = tempfile.mkdtemp(prefix="probe-bench-")
    model, size = "tf_efficientnet_lite0", args.image_size
    records = next(iter(read_source(args.data).splits.values()))
    sample = records.subset(range(min(args.images, len(records))))
    backbone = create_backbone(model, weights=str(WEIGHTS))
    extractor = backbone_extractor(backbone, model, size)
    started = time.perf_counter()
    embed_records(sample, extractor)
    cold = _rate(len(sample), started)
    started = time.perf_counter()
    embed_records(sample, extractor)
    warm = _rate(len(sample), started)
    classifier = Classifier(backbone, create_head("linear", backbone.num_features, 4)).eval()
    info = ModelInfo(
        architecture=model,
        labels=list("abcd"),
        image_size=size,
        mean=list(backbone.mean),
        std=list(backbone.std),
        resize=extractor.info.resize,
        name=model,
    )
    rates = {"embedding, empty cache": cold, "embedding, from cache": warm}
    for bf16 in (False, True):  # the embedding pass uses bf16 where the CPU computes it natively
        predictor = Predictor(TorchEngine(classifier, info, Path(model), bf16=bf16))
        started = time.perf_counter()
        for _ in predictor.predict_records(sample):
            pass
        rates[f"Predictor, {'bf16' if bf16 else 'fp32'}"] = _rate(len(sample), started)
    reference = rates[f"Predictor, {'bf16' if extractor.engine().bf16 else 'fp32'}"]
    print(
        f"{len(sample)} images at {size} px, {model}; embedding in bf16: {extractor.engine().bf16}"
    )
    print("| pass | images/s | / predictor at the same precision |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.0f} | {rate / reference:.2f} |")
    with tempfile.TemporaryDirectory() as runs:
        values = {
            "data": {"path": args.data, "image_size": size, "batch_size": 256},
            "model": {"name": model, "weights": str(WEIGHTS)},
            "train": {
                "probe": "linear",
                "epochs": args.epochs,
                "early_stopping_patience": args.epochs,
            },
            "run": {"runs_dir": runs, "name": "probe"},
        }
        started = time.perf_counter()
        run = train(build_config(values))
        total = time.perf_counter() - started
        metrics = json.loads((run / "metrics.json").read_text())
        fit = sum(float(row["seconds"]) for row in read_history(run / "history.csv"))
    embedded = sum(len(r) for r in read_source(args.data).splits.values())
    print(
        f"\nlinear probe on {embedded} images' cached embeddings: {metrics['epochs_run']} epochs "
        "(training and "
        f"validation) in {fit:.1f} s; embedding pass + epochs {metrics['train_seconds']:.1f} s; "
        "whole command "
        f"{total:.0f} s"
    )


if __name__ == "__main__":
    main()
