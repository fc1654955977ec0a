"""Configs as data: YAML files, ``--set`` overrides and validation that fails in one line.

Precedence, for every verb: a config's defaults < ``--config FILE`` < flags < ``--set key=value``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from histoclass.errors import HistoclassError

__all__ = [
    "ConfigModel",
    "apply_overrides",
    "describe_error",
    "load_yaml",
    "option",
    "parse_set",
    "validate",
]

M = TypeVar("M", bound=BaseModel)


class ConfigModel(BaseModel):
    """A config or a config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def option(
    default: Any, description: str, *, flag: str | bool = True, argument: bool = False, **rules: Any
) -> Any:
    """A config field that is also a command-line option (``--name``, or ``--FLAG``) or positional argument.

    Fields made with plain ``Field`` are reachable through ``--config`` and ``--set`` only.
    """
    cli = "argument" if argument else flag
    return Field(default, description=description, json_schema_extra={"cli": cli}, **rules)


def describe_error(error: ValidationError) -> str:
    """One line naming every bad key and what was wrong with it."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if not where:  # a rule across fields: its message names the flags itself
            return message
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{where}: {message}{shown}")
    return "bad config value: " + "; ".join(parts)


def validate(model: type[M], values: dict[str, Any]) -> M:
    """``values`` validated into ``model``, or a :class:`HistoclassError` naming the bad keys."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise HistoclassError(describe_error(error)) from None


def load_yaml(path: str | Path | None) -> dict[str, Any]:
    """A YAML config file as a dict (empty when ``path`` is None)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise HistoclassError(f"--config: no such file '{path}'; pass a YAML file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first = str(error).splitlines()[0]
        raise HistoclassError(f"--config: '{path}' is not valid YAML ({first})") from None
    if not isinstance(values, dict):
        raise HistoclassError(
            f"--config: '{path}' must hold a mapping of keys (e.g. data:, train:)"
        )
    return values


def parse_set(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings (``section.key=value`` for sectioned configs), values parsed as YAML scalars."""
    parsed = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise HistoclassError(
                f"--set: '{item}' is not key=value (section.key=value for train, e.g. train.lr=0.0005)"
            )
        try:
            parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise HistoclassError(
                f"--set: the value in '{item}' is not valid YAML; quote it, e.g. key='[1'"
            ) from None
    return parsed


def apply_overrides(
    values: dict[str, Any], overrides: dict[str, Any] | list[str]
) -> dict[str, Any]:
    """``values`` with dotted-key overrides applied (a copy); ``overrides`` may be ``--set`` strings."""
    if isinstance(overrides, list):
        overrides = parse_set(overrides)
    result = _copy(values)
    for key, value in overrides.items():
        *sections, field = key.split(".")
        node = result
        for depth, section in enumerate(sections):
            child = node.setdefault(section, {})
            if not isinstance(child, dict):
                where = ".".join(sections[: depth + 1])
                raise HistoclassError(
                    f"'{where}' must be a section (a mapping of keys), not {child!r}"
                )
            node = child
        node[field] = value
    return result


def _copy(values: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _copy(value) if isinstance(value, dict) else value for key, value in values.items()
    }
