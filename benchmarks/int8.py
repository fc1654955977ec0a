"""int8 post-training quantisation of a run, by onnxruntime and by OpenVINO's NNCF: agreement and speed.

    python -m benchmarks.int8 RUN [--calibration 300] [--check 1000] [--accuracy-control]

The run's validation images are split once: ``--calibration`` images calibrate every quantiser, the
next ``--check`` images measure top-1 agreement with PyTorch fp32 (and accuracy against the labels).
Speed: OpenVINO at batch 32, best of 3 passes over 512 images, against the float model compiled the
same way. The accuracy- controlled NNCF row (layers reverted to float until agreement on the
calibration images drops at most one point) is slow and optional. Needs ``pip install nncf`` besides
the ``openvino`` and ``runtime`` extras.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _speed(compiled, inputs: np.ndarray, batch: int = 32) -> float:
    request = compiled.create_infer_request()
    request.infer([inputs[:batch]])
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        for first in range(0, len(inputs), batch):
            request.infer([inputs[first : first + batch]])
        best = max(best, len(inputs) / (time.perf_counter() - started))
    return best


def _outputs(compiled, inputs: np.ndarray) -> np.ndarray:
    request = compiled.create_infer_request()
    return np.concatenate(
        [request.infer([inputs[i : i + 64]])[0] for i in range(0, len(inputs), 64)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="run directory")
    parser.add_argument("--calibration", type=int, default=300)
    parser.add_argument("--check", type=int, default=1000)
    parser.add_argument("--accuracy-control", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, "src")
    import nncf
    import openvino as ov

    from histoclass.conversion.parity import load_check_images
    from histoclass.deploy import open_predictor
    from histoclass.deploy.engines import convert_run
    from histoclass.export.job import quantize_int8
    from histoclass.inference.preprocess import normalize_numpy

    reference = open_predictor(args.run, "torch", shift=False)
    info = reference.info
    pixels, labels = load_check_images(Path(args.run), None, info, args.calibration + args.check)
    calibration, check, truth = (
        pixels[: args.calibration],
        pixels[args.calibration :],
        labels[args.calibration :],
    )
    expected = reference.predict_pixels(check).argmax(1)
    inputs = normalize_numpy(check, info.mean, info.std)
    core = ov.Core()
    rows = []

    def row(name: str, top1: np.ndarray, compiled=None) -> None:
        speed = _speed(compiled, inputs[:512]) if compiled is not None else None
        rows.append((name, (top1 == expected).mean(), (top1 == truth).mean(), speed))
        print(f"{name}: agreement {rows[-1][1]:.4f}", flush=True)

    def compiled_of(model):
        return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    with tempfile.TemporaryDirectory() as folder:
        export = convert_run(reference.engine.model, info, Path(folder))
        onnx = str(export.model("onnx"))
        float_model = compiled_of(core.read_model(onnx))
        row("none (OpenVINO f32)", _outputs(float_model, inputs).argmax(1), float_model)
        quantized = Path(folder) / "model.int8.onnx"
        quantize_int8(export.model("onnx"), quantized, calibration, info)
        ort = open_predictor(quantized, "onnx")
        row(
            "onnxruntime static, QDQ, per-channel, reduce_range",
            ort.predict_pixels(check).argmax(1),
        )
        samples = nncf.Dataset(
            [
                normalize_numpy(calibration[i : i + 1], info.mean, info.std)
                for i in range(len(calibration))
            ]
        )
        for preset in ("PERFORMANCE", "MIXED"):
            model = nncf.quantize(
                core.read_model(onnx),
                samples,
                preset=getattr(nncf.QuantizationPreset, preset),
                subset_size=len(calibration),
            )
            compiled = compiled_of(model)
            row(
                f"NNCF quantize, {preset.lower()} preset",
                _outputs(compiled, inputs).argmax(1),
                compiled,
            )
        if args.accuracy_control:
            targets = reference.predict_pixels(calibration).argmax(1)
            normalized = normalize_numpy(calibration, info.mean, info.std)
            batches = [
                (normalized[i : i + 32], targets[i : i + 32]) for i in range(0, len(normalized), 32)
            ]

            def agreement(compiled, items) -> float:
                hits = [(compiled([x])[compiled.output(0)].argmax(1) == t).sum() for x, t in items]
                return float(sum(hits)) / len(targets)

            model = nncf.quantize_with_accuracy_control(
                core.read_model(onnx),
                samples,
                nncf.Dataset(batches, lambda item: item[0]),
                validation_fn=agreement,
                max_drop=0.01,
                drop_type=nncf.DropType.ABSOLUTE,
                preset=nncf.QuantizationPreset.PERFORMANCE,
                subset_size=len(calibration),
            )
            compiled = compiled_of(model)
            row(
                "NNCF quantize_with_accuracy_control, max drop 1 point",
                _outputs(compiled, inputs).argmax(1),
                compiled,
            )
    base = rows[0][3]
    print(f"\n{args.calibration} calibration images, agreement on {len(check)} others\n")
    print(
        "| quantisation | top-1 agreement | accuracy | img/s | vs OpenVINO f32 |\n|---|---|---|---|---|"
    )
    for name, agree, accuracy, speed in rows:
        timing = f"{speed:,.0f} | {speed / base:.2f}x" if speed else "— | —"
        print(f"| {name} | {agree:.1%} | {accuracy:.3f} | {timing} |")


if __name__ == "__main__":
    main()
