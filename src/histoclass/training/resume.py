"""Choosing the checkpoint an interrupted run continues from: the newest one that loads."""

from __future__ import annotations

from pathlib import Path

from histoclass.console import console
from histoclass.errors import HistoclassError
from histoclass.runs import RunDir
from histoclass.runs.checkpoints import resume_candidates
from histoclass.training.callbacks import AtomicCheckpointIO

__all__ = ["resume_checkpoint"]


def resume_checkpoint(run: RunDir) -> Path:
    """The newest loadable checkpoint of ``run``; a damaged one is reported and the next newest used."""
    candidates = resume_candidates(run)
    if not candidates:
        raise HistoclassError(
            f"--resume: '{run.root}' has no checkpoint yet ({run.last_checkpoint.name}); start the run again"
        )
    for path in candidates:
        try:
            AtomicCheckpointIO().load_checkpoint(path)
        except Exception as error:
            # a truncated or foreign file fails in many ways; each means "not this one"
            console.print(
                f"[yellow]--resume: {path.name} cannot be loaded ({type(error).__name__}); skipping it[/]"
            )
            continue
        return path
    raise HistoclassError(
        f"--resume: no checkpoint in '{run.checkpoints}' can be loaded; start the run again"
    )
