"""A run's ``config.yaml``: the resolved train config, written once at the start and read back by
later jobs."""

from __future__ import annotations

import yaml

from histoclass.atomic import write_text
from histoclass.config import Config, build_config, load_yaml
from histoclass.errors import HistoclassError
from histoclass.runs.layout import RunDir

__all__ = ["read_run_config", "write_run_config"]


def write_run_config(run: RunDir, config: Config) -> None:
    """Write the resolved config as YAML, atomically."""
    write_text(run.config, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def read_run_config(run: RunDir) -> Config:
    """The config a run was trained with; a run directory without one is an error naming it."""
    if not run.config.is_file():
        raise HistoclassError(
            f"'{run.root}' is not a run directory (no {run.config.name}); pass runs/NAME"
        )
    return build_config(load_yaml(run.config))
