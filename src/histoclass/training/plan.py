"""The training plan: what one fit needs, resolved once from the config and handed down whole.

:func:`histoclass.training.launch.launch` makes it (image size settled, run directory claimed,
images checked and split); the fit, the folds and the finish read it. A fold is the same plan with
its own directory, config, images and a fresh copy of the backbone.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from histoclass.config import Config
from histoclass.data.checks import DataReport
from histoclass.data.records import ImageRecords
from histoclass.data.stain_normalize import StainNormalization
from histoclass.models.factory import Backbone
from histoclass.runs import RunDir

__all__ = ["TrainingPlan"]


@dataclass(frozen=True)
class TrainingPlan:
    """One fit: the resolved config, where it writes, the backbone it starts from and the images it sees."""

    config: Config
    run: RunDir
    backbone: Backbone
    report: DataReport
    train_records: ImageRecords
    val_records: ImageRecords
    stain: StainNormalization | None = None
    #: The checkpoint a resumed fit continues from.
    checkpoint: Path | None = None
    #: Extra Lightning callbacks (the benchmark's timer, say).
    callbacks: tuple = ()

    @property
    def classes(self) -> list[str]:
        return self.report.source.classes

    def fold(
        self,
        run: RunDir,
        config: Config,
        train: ImageRecords,
        val: ImageRecords,
        checkpoint: Path | None,
    ) -> TrainingPlan:
        """Fold ``run``'s plan: every fold starts from the same backbone weights."""
        return dataclasses.replace(
            self,
            config=config,
            run=run,
            backbone=copy.deepcopy(self.backbone),
            train_records=train,
            val_records=val,
            checkpoint=checkpoint,
        )
