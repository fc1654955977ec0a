"""The benchmark's stages, each returning images per second over its timed steps.

- the compute ceiling: training and inference steps on a batch already on the device;
- the naive pipeline: ``ImageFolder`` + PIL + torchvision transforms in a ``DataLoader`` on every core;
- histoclass's own paths: :func:`histoclass.training.job.train` and ``Predictor.predict_records``, as
  ``histoclass train`` and ``histoclass predict`` run them, timed from inside (after ``warmup`` batches);
  a ceiling step follows each of train's batches, for a ratio measured in the same seconds.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch
from torch.nn import functional as F

from histoclass.benchmark.monitor import UsageMonitor, synchronize
from histoclass.config import AugmentConfig, BenchConfig, DataConfig, build_config
from histoclass.data.sources import read_source
from histoclass.inference.preprocess import normalize_torch
from histoclass.models.factory import Classifier, create_model
from histoclass.training.optim import FUSED

__all__ = [
    "PAIRED",
    "CeilingStep",
    "bench_device",
    "bench_records",
    "ceiling",
    "naive",
    "ours_predict",
    "ours_train",
    "timed",
]

#: The training stages' validation share (a validation pass ends each epoch).
_VAL_FRACTION = 0.05
#: A training stage's ceiling, measured between its own steps.
PAIRED = "paired_ceiling_images_per_s"


def bench_device() -> torch.device:
    """Where every stage runs: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bench_records(settings: BenchConfig) -> list:
    """Every image of the benchmark's folder, as the data layer reads it."""
    return read_source(str(settings.data), DataConfig(path=str(settings.data))).splits["all"]


def _model(settings: BenchConfig, num_classes: int) -> Classifier:
    model = create_model(settings.model, num_classes, pretrained=False)
    model = model.to(bench_device(), memory_format=torch.channels_last)
    if settings.compile:
        model.compile()
    return model


def _autocast(device: torch.device):
    return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")


def _train_step(
    model: Classifier, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, labels: torch.Tensor
):
    with _autocast(inputs.device):
        loss = F.cross_entropy(model(inputs), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(batches: Iterable, warmup: int, steps: int, monitor: UsageMonitor, work=None) -> float:
    """Run ``work`` on each batch; images/s over the ``steps`` batches after ``warmup`` (fewer if data ends).

    Without ``work`` the iterator itself does the work, so a batch counts once it arrives after the start.
    """
    images, started = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            started = synchronize()
            monitor.start()
        if work is not None:
            work(batch)
        if i > warmup or (i == warmup and work is not None):
            images += len(batch[1])
        if i + 1 >= warmup + steps:
            break
    ended = synchronize()
    monitor.stop()
    if started is None or images == 0:
        raise ValueError(
            f"the data gave fewer than {warmup + 1} batches; use more images or a smaller batch"
        )
    return images / (ended - started)


class CeilingStep:
    """The ceiling's training step (forward, backward, AdamW) on its own model and one batch resident on
    the device, callable between another loop's steps (so both are measured in the same seconds)."""

    def __init__(self, settings: BenchConfig, num_classes: int) -> None:
        device, size, n = bench_device(), settings.image_size, settings.batch_size
        self.model = _model(settings, num_classes)
        pixels = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device)
        mean = torch.tensor(self.model.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.model.std, device=device).view(1, -1, 1, 1)
        self.inputs = normalize_torch(pixels, mean, std)
        self.labels = torch.randint(0, num_classes, (n,), device=device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, **FUSED)
        self.model.train()

    def __call__(self, batch=None) -> None:
        _train_step(self.model, self.optimizer, self.inputs, self.labels)


def ceiling(settings: BenchConfig, num_classes: int, monitor: UsageMonitor, train: bool) -> float:
    """Training (forward, backward, AdamW) or inference steps on one batch resident on the device."""
    step = CeilingStep(settings, num_classes)
    batches = ((step.inputs, step.labels) for _ in range(settings.warmup + settings.steps))
    if train:
        return timed(batches, settings.warmup, settings.steps, monitor, step)
    model = step.model.eval()

    def infer(batch) -> None:
        with torch.inference_mode(), _autocast(batch[0].device):
            model(batch[0])

    return timed(batches, settings.warmup, settings.steps, monitor, infer)


def _naive_loader(settings: BenchConfig, mean: tuple, std: tuple) -> torch.utils.data.DataLoader:
    """The pipeline of a typical notebook: ImageFolder, PIL, per-image torchvision transforms, all cores."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from histoclass.data.transforms import create_train_transform

    size = settings.image_size
    augment = create_train_transform(AugmentConfig(preset=settings.augment), size)
    transform = v2.Compose(
        [
            v2.Resize((size, size)),
            *augment.transforms,
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )
    return torch.utils.data.DataLoader(
        ImageFolder(str(settings.data), transform=transform),
        batch_size=settings.batch_size,
        shuffle=True,
        num_workers=os.cpu_count() or 1,
        pin_memory=bench_device().type == "cuda",
        drop_last=True,
    )


def naive(
    settings: BenchConfig, num_classes: int, monitor: UsageMonitor, with_model: bool
) -> float:
    """The naive pipeline feeding the same training step (or, ``with_model=False``, the loader alone)."""
    model = _model(settings, num_classes)
    loader = _naive_loader(settings, model.mean, model.std)
    if not with_model:
        return timed(loader, settings.warmup, settings.steps, monitor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **FUSED)
    device = bench_device()

    def step(batch) -> None:
        inputs = (
            batch[0].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        )
        _train_step(model, optimizer, inputs, batch[1].to(device, non_blocking=True))

    return timed(loader, settings.warmup, settings.steps, monitor, step)


class _BatchTimer(L.Callback):
    """Times ``histoclass train``'s own training batches after the first ``warmup`` (``steps`` of them, over
    as many epochs as it takes; then it stops the run), each followed by one step of the ceiling: both rates
    come from the same seconds, so a machine whose speed drifts (by 15% within seconds on the shared 2-core
    VMs) moves both alike. Each of ours is timed from the end of the ceiling step before it to its own end
    (its batch's loading included); validation passes are not training steps (nor in the ceiling)."""

    def __init__(
        self, warmup: int, steps: int, monitor: UsageMonitor, ceiling: CeilingStep
    ) -> None:
        self.warmup, self.steps, self.monitor, self.ceiling = warmup, steps, monitor, ceiling
        self.seen, self.timed, self.images = 0, 0, 0
        self.ours, self.ceiling_s, self.ceiling_images = 0.0, 0.0, 0
        self.mark: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.seen >= self.warmup and self.timed < self.steps and self.mark is None:
            self.monitor.start()
            self.mark = synchronize()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.seen += 1
        if self.mark is None:
            if self.seen <= self.warmup:  # the ceiling's warm-up, as ours
                self.ceiling()
            return
        ended = synchronize()
        self.images += len(batch[1])
        self.ours += ended - self.mark
        self.timed += 1
        self.ceiling()
        self.mark = synchronize()
        self.ceiling_s += self.mark - ended
        self.ceiling_images += len(self.ceiling.labels)
        if self.timed == self.steps:
            self._pause()
            trainer.should_stop = True

    def on_validation_start(self, trainer, pl_module) -> None:
        self._pause()

    def on_train_end(self, trainer, pl_module) -> None:
        self._pause()

    def _pause(self) -> None:
        self.mark = None
        self.monitor.stop()


def ours_train(
    settings: BenchConfig, num_classes: int, monitor: UsageMonitor, runs_dir: Path, cache: str
) -> tuple[dict, Path]:
    """``histoclass train``, every layer trained (as the ceiling), for the epochs that ``warmup`` + ``steps``
    batches take, timed after ``warmup``: its images/s and the ceiling's, stepped between its batches."""
    from histoclass.training.job import train

    per_epoch = max(
        1, int(len(bench_records(settings)) * (1 - _VAL_FRACTION)) // settings.batch_size
    )
    config = build_config(
        {
            "data": {
                "path": str(settings.data),
                "image_size": settings.image_size,
                "batch_size": settings.batch_size,
                "workers": settings.workers,
                "cache": cache,
                "val_fraction": _VAL_FRACTION,
            },
            "augment": {"preset": settings.augment},
            "model": {"name": settings.model, "pretrained": False},
            "train": {
                "epochs": math.ceil((settings.warmup + settings.steps) / per_epoch),
                "phase1_epochs": 0,
                "unfreeze_last": "all",
                "compile": settings.compile,
            },
            "run": {"runs_dir": str(runs_dir), "name": f"bench-{cache}"},
        }
    )
    ceiling = CeilingStep(settings, num_classes)
    timer = _BatchTimer(settings.warmup, settings.steps, monitor, ceiling)
    run = train(config, callbacks=[timer])
    if timer.images == 0:
        raise ValueError(
            f"training gave no batch after the {settings.warmup} of warm-up; use more images"
        )
    rates = {
        "images_per_s": timer.images / timer.ours,
        "timed_batches": timer.timed,
        PAIRED: round(timer.ceiling_images / timer.ceiling_s, 1),
    }
    return rates, run


def ours_predict(settings: BenchConfig, run: Path, monitor: UsageMonitor, cache: str) -> float:
    """``Predictor.predict_records`` over the whole folder on ``--engine`` (what ``histoclass predict`` and
    ``evaluate`` run)."""
    from histoclass.data.cache import decoded_cache
    from histoclass.deploy.engines import open_predictor

    predictor = open_predictor(run, settings.engine, compile=settings.compile)
    records = bench_records(settings)
    pixels = decoded_cache(records, settings.image_size, cache)  # type: ignore[arg-type]
    results = predictor.predict_records(
        records, settings.batch_size, threads=settings.workers, cache=pixels
    )
    batches = ((None, result.indices) for result in results)
    return timed(batches, settings.warmup, len(records), monitor)


def temporary_runs() -> tempfile.TemporaryDirectory:
    """Where the benchmark's training runs go (removed afterwards: they are measurements, not models)."""
    return tempfile.TemporaryDirectory(prefix="histoclass-bench-")
