"""``histoclass tune``: a training config (every train flag applies to every trial) plus how the
study runs."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator

from histoclass.config.loading import ConfigModel, option
from histoclass.config.train import Config

__all__ = ["TuneConfig", "TuneOptions", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``2h`` or ``1.5h``."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"'{text}' is not a duration such as 30m, 2h or 5400 (seconds)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


class TuneOptions(ConfigModel):
    """The study: how many trials, for how long, stored where, judged by which validation metric."""

    trials: int | None = option(
        None, "trials in the study, all processes together [none: until --timeout]", ge=1
    )
    timeout: str | None = option(
        None, "stop starting trials after this long: 30m, 2h, 5400 (seconds)"
    )
    study: str | None = option(
        None, "study name [the data's name]; its directory is RUNS_DIR/tune-NAME"
    )
    storage: str | None = option(
        None,
        "Optuna storage URL (sqlite:///..., postgresql://...) [sqlite in the study's directory]",
    )
    space: str | None = option(
        None, "YAML search space: dotted config keys -> {low, high[, log]} or {choices}"
    )
    metric: Literal["val_loss", "val_accuracy", "val_macro_f1"] = option(
        "val_loss", "validation metric the study optimises (loss: lower is better)"
    )

    @field_validator("timeout")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def timeout_seconds(self) -> float | None:
        return parse_duration(self.timeout) if self.timeout else None

    @property
    def direction(self) -> str:
        return "minimize" if self.metric.endswith("loss") else "maximize"


class TuneConfig(Config):
    """A training config whose ``tune`` section says how the trials around it are searched."""

    tune: TuneOptions = TuneOptions()
