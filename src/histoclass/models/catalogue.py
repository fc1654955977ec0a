"""``histoclass models``: the foundation-model registry as a table (and optionally a CSV)."""

from __future__ import annotations

import csv
import io

from rich.console import Console
from rich.table import Table

from histoclass.atomic import write_text
from histoclass.config import ModelsConfig
from histoclass.models.foundation import FOUNDATION_MODELS, FoundationModel

__all__ = ["list_models", "registry_rows"]

COLUMNS = ("name", "domain", "hub", "parameters (M)", "embedding", "input", "licence", "gated")


def _row(spec: FoundationModel) -> tuple[str, ...]:
    embedding = f"{spec.dim} ({spec.embedding})"
    return (
        spec.name,
        spec.domain,
        spec.repo,
        f"{spec.parameters_m:.0f}",
        embedding,
        f"{spec.image_size}",
        spec.licence,
        "yes" if spec.gated else "no",
    )


def registry_rows(open_only: bool = False) -> list[tuple[str, ...]]:
    """One row per registered foundation model (only ungated ones if ``open_only``), in
    :data:`COLUMNS` order."""
    return [_row(spec) for spec in FOUNDATION_MODELS.values() if not (open_only and spec.gated)]


def list_models(config: ModelsConfig) -> list[tuple[str, ...]]:
    """Print the registry to stdout (a pipe gets plain text), and write it as CSV when asked."""
    rows = registry_rows(config.open_only)
    table = Table(*COLUMNS, title="Foundation models (--model NAME; gated ones need HF_TOKEN)")
    for row in rows:
        table.add_row(*row)
    out = Console(highlight=False)
    if not out.is_terminal:  # a pipe or file gets whole lines, not 80 wrapped columns
        out.width = 220
    out.print(table)
    if config.out:
        buffer = io.StringIO()
        csv.writer(buffer).writerows([COLUMNS, *rows])
        write_text(config.out, buffer.getvalue())
    return rows
