"""Run directories: ``runs/NAME/`` holds everything a run produced. An existing run is never overwritten."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunPaths", "create_run_dir"]


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
