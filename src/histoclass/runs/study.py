"""A tuning study's directory (``runs/tune-NAME``): every trial a run directory, the table, the best one.

Torch- and Optuna-free, so ``compare`` reads a study as it reads runs.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StudyDir"]


@dataclass(frozen=True)
class StudyDir:
    """``study.db`` (the default SQLite storage), ``trials.csv``, ``best`` (a relative link to the
    best trial's run, so the study can move), ``plots/`` and ``trial-NNNN/`` run directories."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def database(self) -> Path:
        return self.root / "study.db"

    @property
    def trials(self) -> Path:
        return self.root / "trials.csv"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def trial(self, number: int) -> Path:
        return self.root / f"trial-{number:04d}"

    def is_study(self) -> bool:
        return self.trials.is_file()

    def top_runs(self, count: int) -> list[Path]:
        """The run directories of the ``count`` best complete trials, best first (``trials.csv`` is written
        sorted)."""
        with open(self.trials, newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if row["state"] == "COMPLETE"]
        return [self.root / row["run"] for row in rows[:count] if (self.root / row["run"]).is_dir()]
