"""CPU inference engines on one trained run: images/s and agreement with PyTorch fp32, measured in one run.

    python -m benchmarks.engines runs/NAME [--sizes 96,224] [--models mobilenetv2_100,resnet50] [--repeats 3]

Each engine predicts the same real validation images (decoded once, uint8) in batches; the figure is the best
of ``--repeats`` passes. At sizes other than the run's, the same architecture with the run's weights is
exported again at that size (images resized), so the speed is the model's, the agreement the run's own.
``--models`` adds other architectures with random weights: their speed is real, their agreement is not shown
(an untrained model's top-1 is noise that any rounding flips).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from histoclass.machine import cpu_flags, cpu_name


def _speed(engine, pixels: np.ndarray, batch: int, repeats: int) -> tuple[float, np.ndarray]:
    engine.logits(pixels[:batch])  # warm-up: first-call compilation and allocation
    best, logits = 0.0, None
    for _ in range(repeats):
        started = time.perf_counter()
        logits = np.concatenate(
            [engine.logits(pixels[s : s + batch]) for s in range(0, len(pixels), batch)]
        )
        best = max(best, len(pixels) / (time.perf_counter() - started))
    return best, logits


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run")
    parser.add_argument("--sizes", default="")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument(
        "--models", default="", help="more timm architectures, random weights (speed only)"
    )
    args = parser.parse_args()

    import torch

    from histoclass.conversion.parity import load_check_images
    from histoclass.deploy.engines import convert_run
    from histoclass.inference.engines.onnx_engine import OnnxEngine
    from histoclass.inference.engines.openvino_engine import OpenVinoEngine
    from histoclass.inference.engines.torch_engine import TorchEngine
    from histoclass.models.factory import create_model
    from histoclass.models.serialization import load_model
    from histoclass.runs import ModelInfo

    run = Path(args.run)
    info = ModelInfo.load(run / "model.json")
    pixels, _ = load_check_images(run, None, info, args.images)
    sizes = [int(s) for s in args.sizes.split(",") if s] or [info.image_size]
    print(f"CPU: {cpu_name()} ({torch.get_num_threads()} threads); flags: {' '.join(cpu_flags())}")
    print(
        f"model: {info.architecture}, {len(pixels)} validation images, batch {args.batch_size}, "
        f"best of {args.repeats}"
    )
    print("| model | size | engine | img/s | vs torch fp32 | top-1 agreement |")
    print("|---|---|---|---|---|---|")
    extra = [m for m in args.models.split(",") if m]
    for architecture, size in [(info.architecture, s) for s in sizes] + [
        (m, s) for m in extra for s in sizes
    ]:
        trained = architecture == info.architecture
        model = (
            load_model(run)[0]
            if trained
            else create_model(architecture, info.num_classes, pretrained=False)
        )
        sized = info.model_copy(update={"image_size": size, "architecture": architecture})
        images = (
            pixels
            if size == info.image_size
            else torch.nn.functional.interpolate(
                torch.from_numpy(pixels).permute(0, 3, 1, 2).float(),
                size=(size, size),
                mode="bilinear",
            )
            .round()
            .clamp(0, 255)
            .byte()
            .permute(0, 2, 3, 1)
            .numpy()
        )
        with tempfile.TemporaryDirectory() as folder:
            export = convert_run(model.eval(), sized, Path(folder), openvino=True)
            engines = {
                "torch fp32 (channels-last)": TorchEngine(model, sized, run, "cpu", bf16=False),
                "torch bf16 autocast": TorchEngine(model, sized, run, "cpu", bf16=True),
                "onnxruntime": OnnxEngine(export.root),
                "openvino f32": OpenVinoEngine(export.root, precision="f32"),
                "openvino bf16": OpenVinoEngine(export.root, precision="bf16"),
            }
            baseline, reference = None, None
            for name, engine in engines.items():
                speed, logits = _speed(engine, images, args.batch_size, args.repeats)
                if baseline is None:
                    baseline, reference = speed, logits.argmax(1)
                agreement = f"{(logits.argmax(1) == reference).mean():.4f}" if trained else "—"
                cells = [
                    architecture,
                    size,
                    name,
                    f"{speed:.0f}",
                    f"{speed / baseline:.2f}x",
                    agreement,
                ]
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)


if __name__ == "__main__":
    main()
