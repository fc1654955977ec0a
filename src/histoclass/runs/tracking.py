"""Where a run was tracked (``tracking.json``: MLflow's store and run id), so ``evaluate`` can add its figures
to the same tracked run. MLflow is imported only when a run was tracked with it."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["TRACKING_FILE", "log_evaluation", "read_tracking"]

TRACKING_FILE = "tracking.json"


def read_tracking(run_root: Path) -> dict | None:
    """The run's tracking record, or None when it was not tracked by MLflow."""
    path = Path(run_root) / TRACKING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _numbers(metrics: dict, prefix: str) -> dict[str, float]:
    """Top-level numeric figures (and one level of sections), named ``prefix`` + key."""
    found = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            found[f"{prefix}{key}"] = float(value)
        elif isinstance(value, dict):
            found |= {
                k: v for k, v in _numbers(value, f"{prefix}{key}.").items() if k.count(".") <= 2
            }
    return found


def log_evaluation(run_root: Path, name: str, metrics: dict) -> str | None:
    """Add an evaluation's figures (``eval.NAME.<metric>``) to the MLflow run the run was tracked as; returns
    the run id (None when the run was not tracked)."""
    record = read_tracking(run_root)
    if record is None:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=record["tracking_uri"])
    for key, value in _numbers(metrics, f"eval.{name}.").items():
        client.log_metric(record["run_id"], key.replace(" ", "_"), value)
    return record["run_id"]
