"""The one rich console every job prints through (stderr, so stdout stays clean for piping)."""

from rich.console import Console

__all__ = ["console"]

console = Console(stderr=True, highlight=False)
