"""The bench job: every stage in one process and one run, then images/s, ratios and resources as
JSON and Markdown."""

from __future__ import annotations

import gc
import os
import platform
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from histoclass.atomic import write_json, write_text
from histoclass.benchmark.engine_stages import (
    ENGINE_STAGES,
    REFERENCE_STAGE,
    EngineBench,
    StageSkipped,
)
from histoclass.benchmark.monitor import UsageMonitor
from histoclass.benchmark.stages import (
    PAIRED,
    bench_device,
    bench_records,
    ceiling,
    naive,
    ours_predict,
    ours_train,
    temporary_runs,
)
from histoclass.config import BenchConfig
from histoclass.console import console
from histoclass.data.cache import decoded_cache
from histoclass.errors import HistoclassError
from histoclass.heap import keep_freed_memory
from histoclass.machine import cpu_name

__all__ = ["RATIOS", "STAGES", "bench"]

#: Stage name -> what it measures, in the order they run: training before any inference engine is loaded (a
#: DataLoader worker forked after ONNX Runtime and OpenVINO have both run in the process crashed here).
STAGES = {
    "ceiling_train": "training steps on a batch already on the device (no data loading)",
    "ceiling_infer": "inference on a batch already on the device",
    "naive_loader": "ImageFolder + PIL + torchvision transforms, all cores, loader alone",
    "naive_train": "the naive loader feeding the same training step",
    "ours_train": "histoclass train --cache none (files), a ceiling step after each batch",
    "ours_train_cache": "histoclass train from the decoded cache (the default when it fits), a ceiling step "
    "after each batch",
    "ours_predict": "histoclass predict (files)",
    "ours_predict_cache": "histoclass predict from the decoded cache",
    **{name: f"CPU engine: {what}" for name, (_, _, what) in ENGINE_STAGES.items()},
}
#: Ratio name -> (numerator stage, denominator stage).
RATIOS = {
    "train / ceiling": ("ours_train", "ceiling_train"),
    "train / naive": ("ours_train", "naive_train"),
    "train cached / ceiling": ("ours_train_cache", "ceiling_train"),
    "train cached / naive": ("ours_train_cache", "naive_train"),
    "predict / ceiling": ("ours_predict", "ceiling_infer"),
    "predict cached / ceiling": ("ours_predict_cache", "ceiling_infer"),
    "naive train / ceiling": ("naive_train", "ceiling_train"),
    **{
        f"{name.removeprefix('engine_')} / torch_fp32": (name, REFERENCE_STAGE)
        for name in list(ENGINE_STAGES)[1:]
    },
}


def _environment() -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "device": gpu or f"CPU ({cpu_name()})",
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _num_classes(data: Path) -> int:
    if not data.is_dir():
        raise HistoclassError(
            f"--data: '{data}' is not a folder; the benchmark needs a class-folder dataset"
        )
    classes = [p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(classes) < 2:
        raise HistoclassError(f"--data: '{data}' needs one sub-folder per class (at least 2)")
    return len(classes)


def _decoded(settings: BenchConfig) -> np.ndarray:
    """The folder's images decoded once at the benchmark's size (uint8), for the engine stages."""
    return decoded_cache(bench_records(settings), settings.image_size, "ram")


def _runners(
    settings: BenchConfig, num_classes: int, runs: Path
) -> dict[str, Callable[[UsageMonitor], float | dict]]:
    """Each stage as a function of its monitor; predict and engine stages use the model the train
    stage wrote."""
    trained: dict[str, Path] = {}
    engines: list[EngineBench] = []

    def train(cache: str) -> Callable[[UsageMonitor], dict]:
        def run(monitor: UsageMonitor) -> dict:
            rates, trained[cache] = ours_train(settings, num_classes, monitor, runs, cache)
            return rates

        return run

    def model() -> Path:
        found = trained.get("none") or trained.get(settings.cache)
        if found is None:
            raise HistoclassError(
                "--stages: predict and engine stages need ours_train or ours_train_cache before them"
            )
        return found

    def predict(cache: str) -> Callable[[UsageMonitor], float]:
        return lambda monitor: ours_predict(settings, model(), monitor, cache)

    def engine(name: str) -> Callable[[UsageMonitor], dict]:
        def run(monitor: UsageMonitor) -> dict:
            if not engines:
                engines.append(EngineBench(model(), runs / "engines", _decoded(settings)))
            return engines[0].stage(name, settings, monitor)

        return run

    return {
        "ceiling_train": lambda m: ceiling(settings, num_classes, m, train=True),
        "ceiling_infer": lambda m: ceiling(settings, num_classes, m, train=False),
        "naive_loader": lambda m: naive(settings, num_classes, m, with_model=False),
        "naive_train": lambda m: naive(settings, num_classes, m, with_model=True),
        "ours_train": train("none"),
        "ours_predict": predict("none"),
        "ours_train_cache": train(settings.cache),
        "ours_predict_cache": predict(settings.cache),
        **{name: engine(name) for name in ENGINE_STAGES},
    }


def _rates(stages: dict, name: str) -> tuple[float, float] | None:
    """A ratio's two rates, where both stages ran: against a training stage's own paired ceiling (its
    steps interleaved with ours) rather than the ceiling stage measured alone at another moment."""
    a, b = RATIOS[name]
    if "images_per_s" not in stages.get(a, {}) or "images_per_s" not in stages.get(b, {}):
        return None
    ceiling = stages[a].get(PAIRED) if b == "ceiling_train" else None
    return stages[a]["images_per_s"], ceiling or stages[b]["images_per_s"]


def _ratios(stages: dict) -> dict[str, float]:
    return {
        name: round(rates[0] / rates[1], 3)
        for name in RATIOS
        if (rates := _rates(stages, name)) is not None
    }


def _markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"{s['model']}, {s['image_size']} px, batch {s['batch_size']}, "
        f"{'compiled' if s['compile'] else 'eager'}, "
        f"augment {s['augment']}, cache {s['cache']} · {result['environment']['device']}, "
        f"{result['environment']['cpus']} CPUs, torch {result['environment']['torch']}",
        "",
        "| stage | images/s | top-1 vs torch fp32 | GPU busy | peak host MiB | peak device MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["stages"].items():
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} | | | | |")
            continue
        util = "–" if row["gpu_util"] is None else f"{row['gpu_util']:.0f}%"
        device = "–" if row["device_peak_mib"] is None else f"{row['device_peak_mib']:,.0f}"
        agreement = f"{row['top1_agreement']:.2%}" if "top1_agreement" in row else "–"
        lines.append(
            f"| {name} | {row['images_per_s']:,.0f} | {agreement} | {util} | "
            f"{row['host_peak_mib']:,.0f} | {device} |"
        )
    lines += ["", "| ratio | value | measured against |", "|---|---:|---|"]
    for name, value in result["ratios"].items():
        a, b = _rates(result["stages"], name)  # type: ignore[misc]
        ours, reference = RATIOS[name]
        paired = reference == "ceiling_train" and PAIRED in result["stages"][ours]
        against = " (its ceiling steps interleaved)" if paired else ""
        lines.append(f"| {name} | {value:.2f} | {a:,.0f} / {b:,.0f} images/s{against} |")
    return "\n".join(lines) + "\n"


def _resolved(config: BenchConfig) -> BenchConfig:
    """Sizes filled in for the device: 224 px / batch 256 on a GPU, 64 px / batch 32 on CPU."""
    gpu = bench_device().type == "cuda"
    return config.model_copy(
        update={
            "image_size": config.image_size or (224 if gpu else 64),
            "batch_size": config.batch_size or (256 if gpu else 32),
        }
    )


def bench(config: BenchConfig) -> dict:
    """Run the chosen stages (names from :data:`STAGES`) and write ``bench.json`` and ``bench.md``."""
    settings = _resolved(config)
    # the engine stages are CPU engines: on a GPU, only when named
    on_gpu = bench_device().type == "cuda"
    everything = [s for s in STAGES if not (on_gpu and s in ENGINE_STAGES)]
    stages = [s.strip() for s in settings.stages.split(",")] if settings.stages else everything
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise HistoclassError(
            f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(STAGES)}"
        )
    num_classes = _num_classes(Path(settings.data))
    keep_freed_memory()  # as train does, for every stage alike: the ceiling is measured as train runs
    out = Path(settings.out or Path("runs") / "bench" / f"{settings.model}-{settings.image_size}px")
    result: dict = {"environment": _environment(), "settings": settings.model_dump(mode="json")}
    result["stages"] = {}
    with temporary_runs() as runs:
        runners = _runners(settings, num_classes, Path(runs))
        for name in [s for s in STAGES if s in stages]:
            console.print(f"[bold]{name}[/]: {STAGES[name]}")
            try:
                with UsageMonitor() as monitor:
                    value = runners[name](monitor)
            except StageSkipped as why:
                result["stages"][name] = {"skipped": str(why)}
                console.print(f"  skipped: {why}")
                continue
            row = value if isinstance(value, dict) else {"images_per_s": value}
            result["stages"][name] = {
                **row,
                "images_per_s": round(row["images_per_s"], 1),
                **asdict(monitor.usage()),
            }
            console.print(f"  {row['images_per_s']:,.0f} images/s")
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    result["ratios"] = _ratios(result["stages"])
    write_json(out / "bench.json", result)
    table = _markdown(result)
    write_text(out / "bench.md", table)
    print(table, flush=True)
    return result
