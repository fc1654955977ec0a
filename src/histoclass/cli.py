"""The ``histoclass`` command, generated from the verbs' configs: parse, validate, call one job; no
logic here.

Every config field made with :func:`histoclass.config.option` becomes a flag (or a positional
argument) with its type, help and default taken from the field, so they are written once. Every verb
also takes ``--config FILE`` and ``--set key=value``; precedence: defaults < ``--config`` < flags <
``--set``.
"""

from __future__ import annotations

import atexit
import gc
import sys
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from histoclass.config import apply_overrides, load_yaml, validate
from histoclass.errors import HistoclassError, Interrupted
from histoclass.verbs import VERBS, Verb

__all__ = ["app", "main"]


def _fields(
    model: type[BaseModel], prefix: str = ""
) -> Iterator[tuple[str, FieldInfo, str | bool]]:
    """(dotted key, field, cli marker) of every field that is a flag or argument, sections included."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _fields(field.annotation, f"{prefix}{name}.")
            continue
        cli = (
            (field.json_schema_extra or {}).get("cli")
            if isinstance(field.json_schema_extra, dict)
            else None
        )
        if cli:
            yield f"{prefix}{name}", field, cli


def _plain(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation


def _click_type(annotation: Any) -> click.ParamType:
    plain = _plain(annotation)
    if get_origin(plain) is Literal:
        return click.Choice([str(a) for a in get_args(plain)])
    return {int: click.INT, float: click.FLOAT}.get(plain, click.STRING)


def _default_text(field: FieldInfo) -> str:
    default = field.default
    if default is PydanticUndefined or default is None:
        return ""
    shown = ("on" if default else "off") if isinstance(default, bool) else default
    return f" [default: {shown}]"


def _parameter(key: str, field: FieldInfo, cli: str | bool) -> click.Parameter:
    dest = key.replace(".", "__")
    if cli == "argument":
        many = get_origin(field.annotation) is list
        return click.Argument(
            [dest], nargs=-1 if many else 1, required=True, metavar=key.upper().replace("_", "-")
        )
    flag = "--" + (cli if isinstance(cli, str) else key.rsplit(".", 1)[-1]).replace("_", "-")
    help_text = (field.description or "") + _default_text(field)
    if _plain(field.annotation) is bool:
        return click.Option([f"{flag}/--no-{flag[2:]}", dest], default=None, help=help_text)
    return click.Option(
        [flag, dest], type=_click_type(field.annotation), default=None, help=help_text
    )


def _arguments_help(verb: Verb) -> str:
    lines = [
        f"  {key.upper().replace('_', '-')}: {field.description}"
        for key, field, cli in _fields(verb.config)
        if cli == "argument"
    ]
    return verb.help + ("\n\n\b\nArguments:\n" + "\n".join(lines) if lines else "")


def _command(name: str, verb: Verb) -> click.Command:
    fields = list(_fields(verb.config))
    flags = {key.replace(".", "__"): key for key, _, _ in fields}

    def run(config: str | None, set_: tuple[str, ...], **given: Any) -> None:
        values = apply_overrides(
            load_yaml(config),
            {
                flags[dest]: list(value) if isinstance(value, tuple) else value
                for dest, value in given.items()
                if value is not None and value != ()
            },
        )
        # before the job's imports
        settings = validate(verb.config, apply_overrides(values, list(set_)))
        verb.job(settings)

    params = [_parameter(key, field, cli) for key, field, cli in fields]
    params += [
        click.Option(["--config", "config"], help="YAML config; flags and --set override it."),
        click.Option(
            ["--set", "set_"],
            multiple=True,
            metavar="KEY=VALUE",
            help="Override any value (repeatable).",
        ),
    ]
    context = {"help_option_names": ["-h", "--help"], "max_content_width": 120}
    return click.Command(
        name, callback=run, params=params, help=_arguments_help(verb), context_settings=context
    )


app = click.Group(
    "histoclass",
    help="Train, evaluate, export and serve transfer-learning classifiers for histology and "
    "microscopy images.",
    commands={name: _command(name, verb) for name, verb in VERBS.items()},
    no_args_is_help=True,
)


# At exit the interpreter's last collections would walk every object torch, timm and Lightning made
# (2-3 s on a 2-core CPU, more than a probe's training): the process ends anyway, so skip them.
atexit.register(gc.freeze)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        status = app.main(prog_name="histoclass", standalone_mode=False)
    except Interrupted as error:
        print(f"histoclass: interrupted: {error}", file=sys.stderr)
        sys.exit(130)
    except HistoclassError as error:
        print(f"histoclass: error: {error}", file=sys.stderr)
        sys.exit(2)
    except click.ClickException as error:
        print(f"histoclass: error: {error.format_message()} (see --help)", file=sys.stderr)
        sys.exit(2)
    except click.Abort:
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
