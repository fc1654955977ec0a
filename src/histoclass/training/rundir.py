"""Run directories: ``runs/NAME/`` holds everything a run produced. An existing run is never overwritten."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from histoclass.data.records import ImageRecords
from histoclass.errors import HistoclassError

__all__ = ["RunPaths", "create_run_dir", "validation_records"]


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
