"""Run directories: ``runs/NAME/`` holds everything a run produced. An existing run is never overwritten."""

from __future__ import annotations

import csv
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from histoclass.data.records import ImageRecords
from histoclass.errors import HistoclassError

__all__ = ["RUN_DIR_ENV", "RunPaths", "claim_run_dir", "create_run_dir", "latest_checkpoint", "validation_records"]

#: Set while a run trains, so processes Lightning spawns for other devices join the same run directory.
RUN_DIR_ENV = "HISTOCLASS_RUN_DIR"


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def labels(self) -> Path:
        return self.root / "labels.txt"

    @property
    def skipped(self) -> Path:
        return self.root / "skipped_files.txt"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


def create_run_dir(runs_dir: str | Path, name: str) -> RunPaths:
    """Claim ``runs_dir/name`` (mkdir is atomic); if taken, the first free ``name-2``, ``name-3``, ..."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = _safe_name(name)
    for attempt in range(1, 10_000):
        candidate = runs_dir / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return RunPaths(candidate)
    raise RuntimeError(f"no free run name for '{base}' in {runs_dir}")


def _launch() -> tuple[int, int, str]:
    """(global rank, world size, launch id) as torchrun or srun announce them; (0, 1, "") otherwise."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launch = env.get("TORCHELASTIC_RUN_ID") or f"{env.get('MASTER_ADDR')}-{env.get('MASTER_PORT')}"
        return int(env["RANK"]), int(env["WORLD_SIZE"]), launch
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return (
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            f"slurm-{env.get('SLURM_JOB_ID')}-{env.get('SLURM_STEP_ID')}",
        )
    return 0, 1, ""


def claim_run_dir(runs_dir: str | Path, name: str, timeout: float = 600.0) -> tuple[RunPaths, bool]:
    """The run directory of this process and whether it writes the run's files (global rank 0 only).

    Processes Lightning spawns find it in :data:`RUN_DIR_ENV`; under torchrun or srun rank 0 claims it and
    the other ranks read its path from a marker file in ``runs_dir`` (a shared filesystem across nodes).
    """
    given = os.environ.get(RUN_DIR_ENV)
    if given:
        return RunPaths(Path(given)), False
    rank, world, launch = _launch()
    if world == 1:
        return create_run_dir(runs_dir, name), True
    marker = Path(runs_dir) / f".launch-{_safe_name(launch)}"
    if rank == 0:
        from histoclass.atomic import write_text

        run = create_run_dir(runs_dir, name)
        write_text(marker, str(run.root))
        return run, True
    deadline = time.monotonic() + timeout
    while not marker.is_file():
        if time.monotonic() > deadline:
            raise HistoclassError(f"rank {rank}: rank 0 did not create the run directory in {timeout:.0f} s")
        time.sleep(0.5)
    return RunPaths(Path(marker.read_text().strip())), False


def latest_checkpoint(run: RunPaths) -> Path:
    """The newest checkpoint to resume from (``last.ckpt`` or a mid-epoch ``step-*.ckpt``)."""
    candidates = [p for p in run.checkpoints.glob("*.ckpt") if p.name == "last.ckpt" or p.name.startswith("step-")]
    if not candidates:
        raise HistoclassError(f"--resume: '{run.root}' has no checkpoint yet (checkpoints/last.ckpt); start it again")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def validation_records(run_dir: str | Path) -> ImageRecords:
    """The exact validation images of a run (``split.csv``), read again from its training data."""
    from histoclass.config import build_config
    from histoclass.data.sources import read_source

    paths = RunPaths(Path(run_dir))
    if not paths.split.is_file() or not paths.config.is_file():
        raise HistoclassError(f"'{run_dir}' has no split.csv/config.yaml; pass --check-data PATH")
    config = build_config(yaml.safe_load(paths.config.read_text()))
    with open(paths.split, newline="") as handle:
        wanted = {row["id"] for row in csv.DictReader(handle) if row["split"] == "val"}
    try:
        source = read_source(config.data.path, config.data)
    except HistoclassError as error:
        raise HistoclassError(
            f"the run's training data is not readable here ({error}); pass --check-data PATH"
        ) from None
    for records in source.splits.values():
        chosen = [i for i, image_id in enumerate(records.ids) if image_id in wanted]
        if chosen:
            return records.subset(np.asarray(chosen))
    raise HistoclassError(f"none of the run's validation images were found in {config.data.path}; pass --check-data")
