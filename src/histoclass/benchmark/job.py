"""The bench job: every stage in one process and one run, then images/s, ratios and resources as JSON and Markdown."""

from __future__ import annotations

import gc
import os
import platform
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from histoclass.atomic import write_json, write_text
from histoclass.benchmark.monitor import UsageMonitor
from histoclass.benchmark.stages import bench_device, ceiling, naive, ours_predict, ours_train, temporary_runs
from histoclass.config import BenchConfig
from histoclass.console import console
from histoclass.errors import HistoclassError

__all__ = ["RATIOS", "STAGES", "bench"]

#: Stage name -> what it measures, in the order they run.
STAGES = {
    "ceiling_train": "training steps on a batch already on the device (no data loading)",
    "ceiling_infer": "inference on a batch already on the device",
    "naive_loader": "ImageFolder + PIL + torchvision transforms, all cores, loader alone",
    "naive_train": "the naive loader feeding the same training step",
    "ours_train": "histoclass train (files)",
    "ours_predict": "histoclass predict (files)",
    "ours_train_cache": "histoclass train --cache",
    "ours_predict_cache": "histoclass predict from the decoded cache",
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
}


def _environment() -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "device": gpu or f"CPU ({platform.processor() or platform.machine()})",
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _num_classes(data: Path) -> int:
    if not data.is_dir():
        raise HistoclassError(f"--data: '{data}' is not a folder; the benchmark needs a class-folder dataset")
    classes = [p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(classes) < 2:
        raise HistoclassError(f"--data: '{data}' needs one sub-folder per class (at least 2)")
    return len(classes)


def _runners(settings: BenchConfig, num_classes: int, runs: Path) -> dict[str, Callable[[UsageMonitor], float]]:
    """Each stage as a function of its monitor; predict stages use the model the train stage just wrote."""
    trained: dict[str, Path] = {}

    def train(cache: str) -> Callable[[UsageMonitor], float]:
        def run(monitor: UsageMonitor) -> float:
            rate, trained[cache] = ours_train(settings, monitor, runs, cache)
            return rate

        return run

    def predict(cache: str) -> Callable[[UsageMonitor], float]:
        def run(monitor: UsageMonitor) -> float:
            model = trained.get("none") or trained.get(settings.cache)
            if model is None:
                raise HistoclassError("--stages: a predict stage needs ours_train or ours_train_cache before it")
            return ours_predict(settings, model, monitor, cache)

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
    }


def _markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"{s['model']}, {s['image_size']} px, batch {s['batch_size']}, {'compiled' if s['compile'] else 'eager'}, "
        f"augment {s['augment']}, cache {s['cache']} · {result['environment']['device']}, "
        f"{result['environment']['cpus']} CPUs, torch {result['environment']['torch']}",
        "",
        "| stage | images/s | GPU busy | peak host MiB | peak device MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in result["stages"].items():
        util = "–" if row["gpu_util"] is None else f"{row['gpu_util']:.0f}%"
        device = "–" if row["device_peak_mib"] is None else f"{row['device_peak_mib']:,.0f}"
        lines.append(f"| {name} | {row['images_per_s']:,.0f} | {util} | {row['host_peak_mib']:,.0f} | {device} |")
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in result["ratios"].items()]
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
    stages = [s.strip() for s in settings.stages.split(",")] if settings.stages else list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise HistoclassError(f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    num_classes = _num_classes(Path(settings.data))
    out = Path(settings.out or Path("runs") / "bench" / f"{settings.model}-{settings.image_size}px")
    result: dict = {"environment": _environment(), "settings": settings.model_dump(mode="json")}
    result["stages"] = {}
    with temporary_runs() as runs:
        runners = _runners(settings, num_classes, Path(runs))
        for name in [s for s in STAGES if s in stages]:
            console.print(f"[bold]{name}[/]: {STAGES[name]}")
            with UsageMonitor() as monitor:
                rate = runners[name](monitor)
            result["stages"][name] = {"images_per_s": round(rate, 1), **asdict(monitor.usage())}
            console.print(f"  {rate:,.0f} images/s")
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    measured = result["stages"]
    result["ratios"] = {
        name: round(measured[a]["images_per_s"] / measured[b]["images_per_s"], 3)
        for name, (a, b) in RATIOS.items()
        if a in measured and b in measured
    }
    write_json(out / "bench.json", result)
    table = _markdown(result)
    write_text(out / "bench.md", table)
    print(table, flush=True)
    return result
