"""Which checkpoint a run resumes from: the newest of ``last.ckpt`` and the mid-epoch ``step-*.ckpt``."""

from __future__ import annotations

from pathlib import Path

from histoclass.runs.layout import RunDir

__all__ = ["STEP_CHECKPOINT_PREFIX", "resume_candidates"]

#: Mid-epoch checkpoints (``--checkpoint-every-steps``) are named ``step-{epoch}-{step}.ckpt``.
STEP_CHECKPOINT_PREFIX = "step-"


def resume_candidates(run: RunDir) -> list[Path]:
    """Checkpoints to resume from, newest first (an interrupted write never replaces one: they are atomic)."""
    found = [
        p
        for p in run.checkpoints.glob("*.ckpt")
        if p == run.last_checkpoint or p.name.startswith(STEP_CHECKPOINT_PREFIX)
    ]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
