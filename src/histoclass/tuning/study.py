"""The Optuna side of a study: its storage, sampler and pruner, and the objective that trains one trial.

Several ``tune`` processes (on one machine or many) share a study through its storage: each asks it for the
next trial, so trial numbers, and the run directories named after them, never collide, and together they stop
at ``--trials``. A process that dies leaves its trial RUNNING; the storage's heartbeat marks it failed once it
falls silent, and a later ``tune`` gives its parameters another try.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

from histoclass.config import Config, TuneOptions
from histoclass.console import console
from histoclass.errors import HistoclassError
from histoclass.runs import RunDir, StudyDir
from histoclass.tuning.space import SearchSpace

__all__ = ["HEARTBEAT_SECONDS", "Objective", "open_study", "optuna_module", "shown"]

#: How often a running trial tells the storage it is alive, and how long a silent one stays RUNNING.
HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120
_EXTRA = "pip install 'histoclass[tune]'"


def optuna_module():
    """Optuna, or one line naming the extra."""
    try:
        import optuna
        import optuna_integration  # noqa: F401  (the Lightning pruning callback)
    except ImportError:
        raise HistoclassError(f"histoclass tune needs Optuna: {_EXTRA}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats, their retry and the matplotlib plots are marked experimental; nothing a user can act on.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _storage(optuna, url: str):
    """The RDB storage at ``url`` (SQLite waits for the other processes' locks), or one line."""
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    # two processes creating one database's tables at once: the loser tries again
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=retry,
            )
        except ImportError as error:
            raise HistoclassError(f"--storage: cannot open '{url}' ({error})") from None
        except Exception as error:
            # SQLAlchemy's connection errors: long, and all mean the same here
            if attempt == 2:
                raise HistoclassError(
                    f"--storage: cannot open '{url}' ({str(error).splitlines()[0][:160]})"
                ) from None
            time.sleep(1 + attempt)


def open_study(options: TuneOptions, study: StudyDir, name: str, warmup_epochs: int):
    """The study ``name`` in its storage, created by the first process that asks, loaded by the others.

    Trials are judged only after ``warmup_epochs``: judged from the second epoch, configurations that start
    fast (small images, few blocks) led and the ones that end best were pruned before they overtook
    (docs/benchmarks.md, the second study)."""
    optuna = optuna_module()
    storage = _storage(optuna, options.storage or f"sqlite:///{study.database.resolve()}")
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup_epochs)
    # Unseeded: two processes started together must not propose the same first trials.
    sampler = optuna.samplers.TPESampler(n_startup_trials=5)
    try:
        return optuna.create_study(
            study_name=name,
            storage=storage,
            direction=options.direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    except optuna.exceptions.DuplicatedStudyError:
        # another process created it between the check and the insert
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


class Objective:
    """One trial: the base config with the trial's values, trained as a run directory of the study;
    its value is the run's validation ``metric`` (the best epoch's). Pruned trials leave no
    directory behind."""

    def __init__(self, base: Config, space: SearchSpace, study: StudyDir, metric: str) -> None:
        self.base, self.space, self.study, self.metric = base, space, study, metric

    def config(self, values: dict, number: int) -> Config:
        config = self.space.apply(self.base, values)
        run = {
            "name": self.study.trial(number).name,
            "runs_dir": str(self.study.root),
            "resume": None,
        }
        return config.model_copy(update={"run": config.run.model_copy(update=run)})

    def __call__(self, trial) -> float:
        import optuna
        from optuna_integration import PyTorchLightningPruningCallback

        from histoclass.training.job import train

        values = self.space.sample(trial)
        config = self.config(values, trial.number)
        console.rule(f"trial {trial.number}")
        console.print(", ".join(f"{key}={shown(value)}" for key, value in values.items()))
        try:
            run = Path(train(config, [PyTorchLightningPruningCallback(trial, monitor=self.metric)]))
        except optuna.TrialPruned:
            shutil.rmtree(self.study.trial(trial.number), ignore_errors=True)
            raise
        trial.set_user_attr("run", run.name)
        return float(json.loads(RunDir(run).metrics.read_text())[self.metric])


def shown(value) -> str:
    """A parameter's value as a person reads it (3 significant digits)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
