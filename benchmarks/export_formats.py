"""Exported formats against the PyTorch model: agreement on held-out images, file size, CPU latency.

    python benchmarks/export_formats.py runs/NAME --data PATH [--latency-images 64]

Exports any missing format first (``histoclass export``), then prints a markdown table. Latency is
the median of single-image calls (batch 1) after a warm-up, and throughput is images/s at batch 32,
on this machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from histoclass.config import DataConfig, ExportConfig
from histoclass.data.batches import iter_batches
from histoclass.data.sources import read_source
from histoclass.deploy import open_predictor
from histoclass.deploy.engines import images_per_second
from histoclass.export.job import export
from histoclass.inference.predictor import Predictor
from histoclass.runs import RunDir


def held_out_pixels(data: str, size: int) -> np.ndarray:
    _, records = read_source(data, DataConfig(path=data)).split(None)
    return np.concatenate([batch.pixels for batch in iter_batches(records, size, 64)])


def latency_ms(predictor: Predictor, pixels: np.ndarray, count: int) -> float:
    predictor.predict_pixels(pixels[:1])
    times = []
    for i in range(count):
        started = time.perf_counter()
        predictor.predict_pixels(pixels[i : i + 1])
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", required=True, help="held-out labelled images")
    parser.add_argument("--latency-images", type=int, default=64)
    args = parser.parse_args()
    run = RunDir(args.run)
    folder = run.export
    formats = {
        "pytorch": run.weights,
        "onnx": folder.model("onnx"),
        "onnx-int8": folder.int8_onnx,
        "tflite": folder.model("tflite"),
        "torchscript": folder.model("torchscript"),
    }
    for fmt, path in (
        ("onnx", folder.int8_onnx),
        ("tflite", formats["tflite"]),
        ("torchscript", formats["torchscript"]),
    ):
        if not path.is_file():
            export(ExportConfig(run=str(args.run), format=fmt, int8=fmt == "onnx"))
    reference = open_predictor(args.run, "torch", device="cpu", shift=False)
    pixels = held_out_pixels(args.data, reference.info.image_size)
    expected = np.concatenate(
        [reference.predict_pixels(pixels[i : i + 64]) for i in range(0, len(pixels), 64)]
    )
    print(f"{len(pixels)} held-out images from {args.data}; CPU: {os.cpu_count()} cores\n")
    print(
        "| format | file size | top-1 agreement | max abs diff | latency, batch 1 | throughput, batch 32 |"
    )
    print("|---|---|---|---|---|---|")
    for fmt, path in formats.items():
        if not path.is_file():
            int8 = json.loads(folder.parity.read_text())["onnx"].get("int8", {})
            print(
                f"| {fmt} | {int8.get('size_bytes_int8', 0) / 1e6:.1f} MB | discarded by the export's check "
                f"({int8.get('top1_agreement', 0):.1%} agreement on its check images) | | | |"
            )
            continue
        predictor = reference if fmt == "pytorch" else open_predictor(path)
        probabilities = np.concatenate(
            [predictor.predict_pixels(pixels[i : i + 64]) for i in range(0, len(pixels), 64)]
        )
        agreement = (probabilities.argmax(1) == expected.argmax(1)).mean()
        latency, rate = (
            latency_ms(predictor, pixels, args.latency_images),
            images_per_second(predictor, pixels),
        )
        difference = np.abs(probabilities - expected).max()
        size = path.stat().st_size / 1e6
        print(
            f"| {fmt} | {size:.1f} MB | {agreement:.2%} | {difference:.1e} | {latency:.2f} ms | "
            f"{rate:.0f} img/s |"
        )


if __name__ == "__main__":
    main()
