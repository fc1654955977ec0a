"""Choosing the engine a model predicts with: ``--engine auto|torch|onnx|openvino``.

A run's weights are converted once to ONNX (and read by OpenVINO from there), cached in the run under
``engines/<digest of the weights>`` and rebuilt when the weights change. Before first use the converted
model is checked against PyTorch on the run's validation images (top-1 agreement at least 99.5%), and both
are timed on them. ``auto`` takes the fastest engine that passed, if it is faster than PyTorch on this machine
(``python -m benchmarks.engines`` shows why no fixed order would do: the winner changes with the model and the
size), and says why it skipped the others: a runtime missing, a check failed or not possible. The checks are
recorded per machine; once they are, a converted engine opens without importing torch (seconds of start-up).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from histoclass.atomic import building_folder, write_json
from histoclass.config import ENGINE_CHOICES
from histoclass.console import console
from histoclass.conversion.parity import MIN_AGREEMENT, load_check_images, measure_parity
from histoclass.errors import HistoclassError
from histoclass.inference.embedder import Embedder
from histoclass.inference.engines import ENGINES
from histoclass.inference.engines.openvino_engine import openvino_core
from histoclass.inference.engines.torch_engine import TorchEngine
from histoclass.inference.predictor import Predictor
from histoclass.inference.predictor import load as load_any
from histoclass.machine import describe_machine
from histoclass.runs import ExportDir, ModelInfo, RunDir, write_labels

__all__ = [
    "AUTO_ORDER",
    "convert_run",
    "images_per_second",
    "load",
    "missing_runtime",
    "open_predictor",
]

#: What writing into a folder on read-only storage raises: no permission, or a read-only file system.
READ_ONLY_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS)
#: The engines ``auto`` checks on a run directory; it takes the fastest that passes, measured during
#: the check.
AUTO_ORDER = ("openvino", "onnx")
_CHECK_IMAGES = 256
#: Raised when an engine's answers change (2: OpenVINO bf16 re-checks near ties in f32), so that runs checked
#: before are checked again rather than trusted or refused on an old record.
_CHECK_VERSION = 2
_RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}
#: The shift score's feature module, converted beside the run's model.
SHIFT_FOLDER = "shift"
#: The largest difference from PyTorch's shift features, relative to the largest feature, that a
#: conversion may show (f32 conversions differ by ~1e-6).
SHIFT_TOLERANCE = 1e-3


def _digest(run: RunDir) -> str:
    """Names the weights (and their description): a new training or calibration gets a new conversion."""
    hasher = hashlib.sha256()
    for path in (run.weights, run.model_info):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
    # the exporter; read without importing torch
    hasher.update(importlib.metadata.version("torch").encode())
    return hasher.hexdigest()[:16]


def convert_run(model, info: ModelInfo, folder: Path, openvino: bool = False) -> ExportDir:
    """``model`` (a torch module) as ONNX (and, with ``openvino``, an OpenVINO IR) in ``folder``, with its
    preprocessing and labels: an export folder every engine opens."""
    import torch

    from histoclass.conversion.formats import export_onnx

    out = ExportDir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, info.image_size, info.image_size)
    export_onnx(model.eval(), example, out.model("onnx"))
    if openvino:
        import openvino as ov

        ov.save_model(
            ov.convert_model(str(out.model("onnx"))),
            str(out.model("openvino")),
            compress_to_fp16=False,
        )
    info.save(out.preprocess)
    write_labels(out.labels, info.labels)
    return out


def images_per_second(predictor: Predictor, pixels: np.ndarray, batch: int = 32) -> float:
    """Images per second over ``pixels``, after one warm-up batch (first-call compilation)."""
    predictor.predict_pixels(pixels[:batch])
    started = time.perf_counter()
    for first in range(0, len(pixels), batch):
        predictor.predict_pixels(pixels[first : first + batch])
    return len(pixels) / (time.perf_counter() - started)


def _check(reference: Predictor, candidate: Predictor, run: Path) -> dict:
    """Agreement with PyTorch on the run's validation images, and both engines' speed on them, paired."""
    pixels, labels = load_check_images(run, None, reference.info, _CHECK_IMAGES)
    parity = measure_parity(reference, candidate, pixels, labels)
    return {
        **parity.as_dict(),
        "passed": parity.top1_agreement >= MIN_AGREEMENT,
        "min_top1_agreement": MIN_AGREEMENT,
        "images_per_second": images_per_second(candidate, pixels),
        "torch_images_per_second": images_per_second(reference, pixels),
        "machine": describe_machine(),
        "check": _CHECK_VERSION,
    }


#: The run's PyTorch predictor, loaded on first call only: a conversion or a check needs it, a
#: recorded one not.
Reference = Callable[[], Predictor]


def _convert_shift(run: Path, reference: Predictor, folder: Path) -> None:
    """The shift score's feature statistics as ONNX in ``folder/shift``, when the run has a shift
    reference and the converted features match PyTorch's on its validation images; else the scores
    stay with PyTorch."""
    if not RunDir(run).shift_reference.is_file() or missing_runtime("onnx"):
        return
    from histoclass.shift.features import statistics_module

    module = statistics_module(reference.engine.model)
    out = convert_run(module, reference.info, folder / SHIFT_FOLDER)
    try:
        pixels, _ = load_check_images(run, None, reference.info, 16)
    except HistoclassError:  # nothing to check on
        shutil.rmtree(out.root)
        return
    expected = TorchEngine(module, reference.info, run).logits(pixels)
    converted = ENGINES["onnx"](out.root).logits(pixels)
    if np.abs(converted - expected).max() > SHIFT_TOLERANCE * np.abs(expected).max():
        shutil.rmtree(out.root)


def _shift_features(engine) -> Callable[[], Embedder] | None:
    """The shift module converted beside a converted engine's model, opened on the same runtime in
    f32 (the reference was fitted on f32 features); None where it was not built."""
    if engine.name == "torch":
        return None
    folder = Path(engine.source).parent / SHIFT_FOLDER
    if not ExportDir(folder).preprocess.is_file():
        return None
    precision = ("f32",) if engine.name == "openvino" else ()
    return lambda: Embedder(ENGINES[engine.name](folder, *precision))


def _cache(run: Path, reference: Reference) -> ExportDir:
    """The run's conversion for its current weights (and its shift module's), built on first use
    (earlier weights' are removed)."""
    folder = RunDir(run).engines / _digest(RunDir(run))
    if not ExportDir(folder).preprocess.is_file():
        with building_folder(folder.parent, ".building-") as built:
            convert_run(reference().engine.model, reference().info, built)
            _convert_shift(run, reference(), built)
            # earlier weights' conversions; not one another process just built
            for old in folder.parent.iterdir():
                if old.is_dir() and not old.name.startswith(".") and old != folder:
                    shutil.rmtree(old, ignore_errors=True)
            with contextlib.suppress(OSError):  # another process built it meanwhile
                built.rename(folder)
    return ExportDir(folder)


def _variants(engine: str) -> list[tuple[str, str | None]]:
    """(record name, precision) to check for ``engine``: bf16 only where the CPU computes it natively."""
    if engine != "openvino":
        return [(engine, None)]
    native = "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return [("openvino-bf16", "bf16")] * native + [("openvino-f32", "f32")]


def missing_runtime(engine: str) -> str | None:
    """Why ``engine`` (onnx, openvino) cannot run here, naming the extra to install; None when it can."""
    if importlib.util.find_spec(_RUNTIMES[engine]) is not None:
        return None
    extra = "openvino" if engine == "openvino" else "runtime"
    return f"{engine} needs {_RUNTIMES[engine]}: pip install 'histoclass[{extra}]'"


def _admitted(
    run: Path, engine: str, reference: Reference
) -> tuple[list[tuple[Predictor, dict]], list[str]]:
    """Every variant of ``engine`` that passes its check on the run's validation images, with its record, and
    why the others did not (each checked once per weights and machine; the records stay in the cache's
    parity.json)."""
    missing = missing_runtime(engine)
    if missing:
        return [], [missing]
    try:
        cache = _cache(run, reference)
    except OSError as error:
        # a shared model folder on read-only storage: nothing can be converted into it
        if error.errno not in READ_ONLY_ERRORS:
            raise
        raise HistoclassError(
            f"'{run}' is read-only, so no converted engine can be cached in it"
        ) from None
    records = json.loads(cache.parity.read_text()) if cache.parity.is_file() else {}
    admitted, reasons = [], []
    for name, precision in _variants(engine):
        opened = (
            ENGINES[engine](cache.root, precision) if precision else ENGINES[engine](cache.root)
        )
        candidate = Predictor(opened, origin=run)
        record = records.get(name, {})
        checked_here = (record.get("machine"), record.get("check")) == (
            describe_machine(),
            _CHECK_VERSION,
        )
        if not checked_here:  # on another machine, by an older check, or never
            records[name] = _check(reference(), candidate, run)
            with contextlib.suppress(OSError):  # read-only storage: checked again next time
                write_json(cache.parity, records)
        if records[name]["passed"]:
            admitted.append((candidate, records[name] | {"name": name}))
        else:
            agreement = records[name]["top1_agreement"]
            reasons.append(
                f"{name} agrees with PyTorch on {agreement:.1%} of the validation images"
            )
    return admitted, reasons


def _fastest(admitted: list[tuple[Predictor, dict]]) -> tuple[Predictor, dict]:
    return max(admitted, key=lambda pair: pair[1]["images_per_second"])


def _auto(run: Path, reference: Reference) -> Predictor:
    """The fastest engine that passed its check, measured on this machine; PyTorch when none is faster."""
    admitted, reasons = [], []
    for engine in AUTO_ORDER:
        try:
            found, why = _admitted(run, engine, reference)
        except HistoclassError as error:
            # no validation images to check on, a conversion that fails
            found, why = [], [f"{engine}: {error}"]
        admitted += found
        reasons += why
    skipped = f"; refused: {'; '.join(reasons)}" if reasons else ""
    if admitted:
        chosen, record = _fastest(admitted)
        speed, torch_speed = record["images_per_second"], record["torch_images_per_second"]
        if speed > torch_speed:
            console.print(
                f"engine: {record['name']} ({speed:.0f} images/s against PyTorch's {torch_speed:.0f}, "
                f"agrees on the validation images{skipped})",
                style="dim",
                markup=False,
                soft_wrap=True,
            )
            return chosen
        reasons.append(
            f"the checked engines were not faster than PyTorch here ({speed:.0f} vs {torch_speed:.0f}/s)"
        )
    console.print(
        f"engine: torch ({'; '.join(reasons)})", style="dim", markup=False, soft_wrap=True
    )
    return reference()


def open_predictor(
    model: str | Path,
    engine: str = "auto",
    compile: bool = False,
    device: str | None = None,
    precision: str | None = None,
    shift: bool = True,
) -> Predictor:
    """The one way to a predictor. ``model``: a run directory or an export (folder or file);
    ``engine``: one of ``ENGINE_CHOICES`` — a run on the fastest checked engine for ``auto``
    (PyTorch on ``device`` for ``torch`` or with ``compile``), an export on its own runtime
    (OpenVINO reads ONNX too). ``precision`` pins OpenVINO's (f32, bf16) or PyTorch's (fp32, bf16).
    A run's predictor also scores each image's shift from the training data when the run has a
    reference (``shift=False``: probabilities only, for jobs that refit the model's own numbers)."""
    if engine not in ENGINE_CHOICES:
        raise HistoclassError(
            f"--engine: unknown engine '{engine}'; choose one of {', '.join(ENGINE_CHOICES)}"
        )
    path = Path(model)
    if not TorchEngine.accepts(path):
        if engine == "torch":
            if not any(ENGINES[name].accepts(path) for name in ENGINES):
                # no model at all: says why (missing, an unfinished run, something else)
                load_any(path)
            raise HistoclassError(
                f"--engine torch needs a run directory (PyTorch weights), not the export '{path}'"
            )
        if engine == "auto":
            return load_any(path)
        return Predictor(
            ENGINES[engine](path, precision) if precision else ENGINES[engine].open(path)
        )
    from histoclass.shift.scorer import open_scorer

    reference = functools.cache(lambda: _torch(path, compile, device, precision))
    if engine == "torch" or compile:
        chosen = reference()
    elif engine == "auto":
        chosen = _auto(path, reference)
    else:
        chosen = _chosen(path, engine, reference)
    scorer = open_scorer(path, _shift_features(chosen.engine)) if shift else None
    return Predictor(chosen.engine, path, scorer)


def load(model: str | Path, compile: bool = False) -> Predictor:
    """``histoclass.load``: PyTorch for a run directory (heatmaps work), an export on its own runtime."""
    return open_predictor(model, "torch" if TorchEngine.accepts(Path(model)) else "auto", compile)


def _torch(path: Path, compile: bool, device: str | None, precision: str | None) -> Predictor:
    bf16 = None if precision is None else precision == "bf16"
    predictor = Predictor(TorchEngine.open(path, device, bf16), origin=path)
    if compile:
        predictor.compile()
    return predictor


def _chosen(path: Path, engine: str, reference: Reference) -> Predictor:
    """``--engine onnx|openvino`` on a run: the fastest of its variants that passed, or one line
    saying why not."""
    admitted, reasons = _admitted(path, engine, reference)
    if not admitted:
        needs = f" (needs {MIN_AGREEMENT:.1%})" if any("agrees" in r for r in reasons) else ""
        raise HistoclassError(
            f"--engine {engine}: {'; '.join(reasons)}{needs}; use --engine auto or torch"
        )
    return _fastest(admitted)[0]
