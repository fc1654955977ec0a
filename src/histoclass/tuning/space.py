"""The search space as data: dotted config keys, each a range (``low``, ``high``, ``log``) or a list
of choices.

The defaults cover what the recipe benchmarks showed to matter per dataset (how many blocks to fine-tune and
their layer decay, learning rate, label smoothing, augmentation, EMA, image size) and the backbones whose
weights lie beside ``--weights``. A ``--space`` YAML adds keys or replaces them; ``key: null`` drops one.
Every value is checked against the training config before the first trial, so a bad space fails in a line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoclass.config import Config, apply_overrides, load_yaml, validate
from histoclass.errors import HistoclassError

__all__ = ["DEFAULT_SPACE", "Parameter", "SearchSpace", "sibling_weights"]

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "data.image_size": {"choices": [64, 96, 128]},
    "train.unfreeze_last": {"choices": [2, 3, "all"]},
    "train.layer_decay": {"low": 0.6, "high": 1.0},
    "train.lr": {"low": 3e-4, "high": 1e-2, "log": True},
    "augment.label_smoothing": {"low": 0.0, "high": 0.2},
    "augment.preset": {"choices": ["histology", "keras", "robust"]},
    "train.ema": {"choices": [0.0, 0.998]},
}

#: timm's checkpoint file names: ``<model>.<pretrained tag>.safetensors`` (as ``--weights`` files are named).
_TIMM_FILE = re.compile(r"^(?P<model>[\w-]+)\.[\w-]+\.(safetensors|pth|bin)$")


def sibling_weights(weights: str | None) -> dict[str, str]:
    """Model name -> checkpoint for every timm-named checkpoint in ``weights``' folder: the backbones a
    machine without the hub has weights for."""
    if not weights or not Path(weights).is_file():
        return {}
    found = {}
    for path in sorted(Path(weights).parent.iterdir()):
        if match := _TIMM_FILE.match(path.name):
            found.setdefault(match.group("model"), str(path))
    return found


@dataclass(frozen=True)
class Parameter:
    """One dimension: a range (ints stay ints) or choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    @property
    def extremes(self) -> list:
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def _known(key: str) -> bool:
    """Whether ``key`` names a field of the training config (``section.field``)."""
    section, _, name = key.partition(".")
    field = Config.model_fields.get(section)
    return field is not None and name in getattr(field.annotation, "model_fields", {})


def _parameter(key: str, spec: Any) -> Parameter:
    """One entry of a space, or one line saying what is wrong with it."""
    if not _known(key):
        raise HistoclassError(
            f"--space: unknown parameter '{key}'; use a training config key such as train.lr"
        )
    if not isinstance(spec, dict) or not (
        {"choices"} <= spec.keys() or {"low", "high"} <= spec.keys()
    ):
        raise HistoclassError(
            f"--space: '{key}' needs {{choices: [...]}} or {{low: .., high: ..}}, not {spec!r}"
        )
    unknown = set(spec) - {"choices", "low", "high", "log"}
    if unknown:
        raise HistoclassError(f"--space: '{key}' has unknown field(s) {', '.join(sorted(unknown))}")
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise HistoclassError(f"--space: '{key}' has no choices; list at least one")
        return Parameter(key, choices=tuple(spec["choices"]))
    low, high = spec["low"], spec["high"]
    if (
        not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
        or not low < high
    ):
        raise HistoclassError(
            f"--space: '{key}' has an empty range (low {low!r}, high {high!r}); need low < high"
        )
    if spec.get("log") and low <= 0:
        raise HistoclassError(
            f"--space: '{key}' is searched on a log scale: low must be above 0, not {low}"
        )
    return Parameter(key, low, high, bool(spec.get("log", False)))


class SearchSpace:
    """The parameters of a study, checked against the base config."""

    def __init__(self, parameters: list[Parameter], backbones: dict[str, str]) -> None:
        self.parameters, self.backbones = parameters, backbones

    @classmethod
    def build(cls, base: Config, file: str | None) -> SearchSpace:
        """The default space (with the backbones that have weights beside ``--weights``), updated by
        ``file``."""
        entries = dict(DEFAULT_SPACE)
        backbones = sibling_weights(base.model.weights)
        if len(backbones) > 1 and base.model.name in backbones:
            entries["model.name"] = {"choices": sorted(backbones)}
        for key, spec in load_yaml(file).items():
            if spec is None:
                entries.pop(key, None)
            else:
                entries[key] = spec
        space = cls([_parameter(key, spec) for key, spec in entries.items()], backbones)
        space.check(base)
        return space

    def apply(self, base: Config, values: dict[str, Any]) -> Config:
        """``base`` with ``values`` set (and the weights of a chosen backbone; a chosen augmentation preset
        brings all its own values)."""
        overrides, resolved = dict(values), base.model_dump()
        if "model.name" in values and values["model.name"] in self.backbones:
            overrides["model.weights"] = self.backbones[values["model.name"]]
        if "augment.preset" in values:
            resolved["augment"] = {}
        return validate(Config, apply_overrides(resolved, overrides))

    def check(self, base: Config) -> None:
        """Every value each parameter can take makes a valid config, or one line naming the key."""
        for parameter in self.parameters:
            for value in parameter.extremes:
                try:
                    self.apply(base, {parameter.key: value})
                except HistoclassError as error:
                    raise HistoclassError(
                        f"--space: '{parameter.key}' = {value!r}: {error}"
                    ) from None

    def sample(self, trial) -> dict[str, Any]:
        return {parameter.key: parameter.suggest(trial) for parameter in self.parameters}
