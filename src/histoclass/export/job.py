"""The export job: run directory -> ``export/model.{onnx,tflite,pt}`` + labels.txt + preprocess.json, checked.

Every export is written to a temporary folder, loaded back by its own runtime and compared with the PyTorch
model on real images; only an export that passes is moved into ``export/``. ``parity.json`` records each check.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from histoclass.atomic import write_json
from histoclass.config import DataConfig
from histoclass.console import console
from histoclass.data.records import ImageRecords
from histoclass.data.sources import read_source
from histoclass.errors import HistoclassError
from histoclass.export.formats import EXPORTERS, FILENAMES, NHWCInput
from histoclass.export.parity import Parity, measure_parity
from histoclass.inference.backends import OnnxPredictor, TorchPredictor
from histoclass.inference.predictor import Predictor, iter_pixel_batches, load
from histoclass.model_info import ModelInfo, write_labels
from histoclass.training.rundir import validation_records

__all__ = ["FLOAT_MAX_DIFF", "FLOAT_MIN_AGREEMENT", "INT8_MIN_AGREEMENT", "export"]

FLOAT_MIN_AGREEMENT = 0.995
FLOAT_MAX_DIFF = 1e-3
INT8_MIN_AGREEMENT = 0.98


def _check_records(run: Path, check_data: str | None, labels: list[str]) -> ImageRecords:
    """The run's validation images, or ``check_data`` (labels mapped to the model's when the names match)."""
    if check_data is None:
        return validation_records(run)
    source = read_source(check_data, DataConfig(path=check_data))
    _, records = source.split(None)
    if all(c in labels for c in source.classes):
        mapping = np.asarray([labels.index(c) for c in source.classes])
        return replace(records, labels=mapping[records.labels])
    return replace(records, labels=np.full(len(records), -1))


def load_check_images(run: Path, check_data: str | None, info: ModelInfo, limit: int, seed: int = 0):
    """Up to ``limit`` readable images (a seeded random sample) as uint8 NHWC, with labels (-1: unknown)."""
    records = _check_records(run, check_data, info.labels)
    size = info.image_size
    if len(records) > limit:
        records = records.subset(np.sort(np.random.default_rng(seed).choice(len(records), limit, replace=False)))
    pixels, labels = [], []
    for indices, batch, _ in iter_pixel_batches(records, size, batch_size=64):
        pixels.append(batch)
        labels.append(records.labels[indices])
    if not pixels or sum(len(p) for p in pixels) == 0:
        raise HistoclassError("--check-data: no readable image to check the export on")
    return np.concatenate(pixels), np.concatenate(labels)


def _describe(parity: Parity) -> str:
    text = f"max |Δp| {parity.max_abs_diff:.2e}, top-1 agreement {parity.top1_agreement:.2%} on {parity.images} images"
    if parity.reference_accuracy is not None:
        text += f", accuracy {parity.reference_accuracy:.4f} -> {parity.exported_accuracy:.4f}"
    return text


def _quantize_int8(float_model: Path, out: Path, calibration: np.ndarray, predictor: Predictor) -> None:
    """onnxruntime static quantisation (QDQ, per-channel int8 weights) calibrated on real images.

    ``reduce_range`` avoids the U8S8 saturation of x86 CPUs without VNNI: on EfficientNet-Lite0 it raised top-1
    agreement from 51% to 84% on a 2-core x86 machine (see docs/benchmarks.md).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([predictor.preprocess(calibration[i : i + 16]) for i in range(0, len(calibration), 16)])

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(float_model), str(prepared))
    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        per_channel=True,
        reduce_range=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    prepared.unlink(missing_ok=True)


def _move_into(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        file.replace(folder / file.name)


def export(
    run: str | Path,
    fmt: str = "onnx",
    check_data: str | None = None,
    int8: bool = False,
    nhwc: bool = False,
    max_images: int = 256,
) -> Path:
    """Export ``run`` as ``fmt``, check it, and return the exported model's path."""
    run = Path(run)
    if fmt not in EXPORTERS:
        raise HistoclassError(f"--format: unknown format '{fmt}'; choose one of {', '.join(EXPORTERS)}")
    if int8 and fmt != "onnx":
        raise HistoclassError("--int8 is supported for --format onnx")
    reference = TorchPredictor(run, device="cpu")
    info: ModelInfo = reference.info.model_copy(update={"layout": "NHWC" if nhwc else "NCHW"})
    pixels, labels = load_check_images(run, check_data, info, max_images)
    filename, exporter = FILENAMES[fmt], EXPORTERS[fmt]
    network: torch.nn.Module = NHWCInput(reference.model) if nhwc else reference.model
    example = torch.from_numpy(reference.preprocess(pixels[:2]))
    example = example.permute(0, 2, 3, 1).contiguous() if nhwc else example
    # preprocess.json is shared by the models beside it, so NHWC models get a folder of their own.
    out_dir = run / "export" / "nhwc" if nhwc else run / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        with console.status(f"Exporting {fmt}"):
            exporter(network.eval(), example, staging / filename)
        info.save(staging / "preprocess.json")
        write_labels(staging / "labels.txt", info.labels)
        exported = load(staging / filename)
        parity = measure_parity(reference, exported, pixels, labels)
        console.print(f"Parity ({fmt}): {_describe(parity)}")
        record = {"format": fmt, "file": filename, "size_bytes": (staging / filename).stat().st_size,
                  "thresholds": {"min_top1_agreement": FLOAT_MIN_AGREEMENT, "max_abs_diff": FLOAT_MAX_DIFF},
                  **parity.as_dict(), "passed": parity.passes(FLOAT_MIN_AGREEMENT, FLOAT_MAX_DIFF)}  # fmt: skip
        if not record["passed"]:
            raise HistoclassError(
                f"export to {fmt} disagrees with the PyTorch model ({_describe(parity)}); nothing was written"
            )
        files = [staging / filename, staging / "preprocess.json", staging / "labels.txt"]
        if int8:
            record["int8"] = _int8_step(staging, filename, reference, pixels, labels, files)
        _move_into(files, out_dir)
        _record_parity(out_dir / "parity.json", fmt, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    console.print(f"Exported [bold]{out_dir / filename}[/] (+ labels.txt, preprocess.json, parity.json)")
    return out_dir / filename


def _int8_step(staging: Path, filename: str, reference, pixels, labels, files: list[Path]) -> dict:
    quantized = staging / "model.int8.onnx"
    with console.status("Quantising to int8"):
        _quantize_int8(staging / filename, quantized, pixels, reference)
    parity = measure_parity(reference, OnnxPredictor(quantized), pixels, labels)
    kept = parity.top1_agreement >= INT8_MIN_AGREEMENT
    sizes = {"size_bytes_float": (staging / filename).stat().st_size, "size_bytes_int8": quantized.stat().st_size}
    console.print(
        f"int8: {_describe(parity)}; size {sizes['size_bytes_float'] / 1e6:.1f} MB -> "
        f"{sizes['size_bytes_int8'] / 1e6:.1f} MB; " + ("kept as model.int8.onnx" if kept else "[red]discarded[/]")
    )
    if kept:
        files.append(quantized)
    return {**parity.as_dict(), **sizes, "kept": kept, "min_top1_agreement": INT8_MIN_AGREEMENT}


def _record_parity(path: Path, fmt: str, record: dict) -> None:
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[fmt] = record
    write_json(path, results)
