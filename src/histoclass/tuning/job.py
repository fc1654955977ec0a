"""The tune job: a study directory (``RUNS_DIR/tune-NAME``) whose trials are training runs, then the table,
Optuna's plots and a ``best`` link that evaluate, export and serve take like any run."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from histoclass.atomic import write_csv
from histoclass.config import Config, TuneConfig
from histoclass.console import console
from histoclass.data.sources import read_source
from histoclass.errors import HistoclassError
from histoclass.models.factory import check_model_name
from histoclass.runs import StudyDir
from histoclass.tuning.space import SearchSpace
from histoclass.tuning.study import Objective, open_study, shown

__all__ = ["tune"]


def _base(config: TuneConfig) -> tuple[Config, str]:
    """The training config every trial starts from and the data's name; the data and model are checked before
    any trial."""
    if not config.data.path:
        raise HistoclassError(
            "--data is required: a class-folder dataset, a labels CSV, an .npz or medmnist:NAME"
        )
    if config.run.resume:
        raise HistoclassError(
            "--resume continues a run; a study resumes by running tune again with its --study"
        )
    if config.tune.trials is None and config.tune.timeout is None:
        raise HistoclassError("a study needs an end: pass --trials, --timeout or both")
    source = read_source(config.data.path, config.data)
    check_model_name(config.model.name)
    return Config.model_validate(config.model_dump(exclude={"tune"})), source.name


def _trial_rows(study, direction: str) -> tuple[list[str], list[list]]:
    """Header and rows of ``trials.csv``: complete trials best first, then the others by number."""
    names = sorted({key for trial in study.trials for key in trial.params})
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    done.sort(key=lambda t: t.value, reverse=direction == "maximize")
    rest = sorted((t for t in study.trials if t.state.name != "COMPLETE"), key=lambda t: t.number)
    header = ["number", "state", "value", "run", "seconds", *names]
    rows = []
    for trial in done + rest:
        seconds = trial.duration.total_seconds() if trial.duration else ""
        run = trial.user_attrs.get("run", "") if trial.state.name == "COMPLETE" else ""
        rows.append(
            [
                trial.number,
                trial.state.name,
                trial.value,
                run,
                seconds,
                *(trial.params.get(n) for n in names),
            ]
        )
    return header, rows


def _link_best(study_dir: StudyDir, run: str) -> None:
    """``best`` -> the best trial's run directory: a relative link, replaced in one step."""
    temporary = study_dir.root / f".best-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(run, target_is_directory=True)
    os.replace(temporary, study_dir.best)


def _plots(study, folder: Path) -> list[Path]:
    """Optuna's own plots as PNGs: history, parameter importances, parallel coordinates (what the
    trials allow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    wanted = {"history": plots.plot_optimization_history}
    if len(complete) >= 2:
        wanted |= {
            "importance": plots.plot_param_importances,
            "parallel": plots.plot_parallel_coordinate,
        }
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in wanted.items():
        # a parameter that took one value gets a flat axis, and a note about it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            axes = plot(study)
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(10, 6)
        figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(folder / f"{name}.png")
    return written


def _report(study, study_dir: StudyDir, config: TuneConfig) -> None:
    header, rows = _trial_rows(study, config.tune.direction)
    write_csv(study_dir.trials, header, rows)
    best = next((row for row in rows if row[1] == "COMPLETE"), None)
    if best is None:
        console.print(
            f"[yellow]No trial of study '{study.study_name}' has finished yet[/]; trials: {study_dir.trials}"
        )
        return
    _link_best(study_dir, best[3])
    plots = _plots(study, study_dir.plots)
    states = [row[1] for row in rows]
    chosen = (f"{k}={shown(v)}" for k, v in zip(header[5:], best[5:], strict=True) if v is not None)
    console.print(
        f"Study [bold]{study.study_name}[/]: {states.count('COMPLETE')} complete, "
        f"{states.count('PRUNED')} pruned, "
        f"{states.count('FAIL')} failed. Best {config.tune.metric} {best[2]:.4f}: trial {best[0]} "
        f"({', '.join(chosen)})"
    )
    console.print(
        f"Best run: [bold]{study_dir.best}[/] (evaluate, export and serve it like any run); "
        f"table {study_dir.trials}; plots {', '.join(p.name for p in plots)} in {study_dir.plots}"
    )


def tune(config: TuneConfig) -> Path:
    """Search the training config for the best validation ``--metric``; returns the study directory."""
    base, data_name = _base(config)
    name = config.tune.study or data_name
    study_dir = StudyDir(Path(base.run.runs_dir) / f"tune-{name}")
    study_dir.root.mkdir(parents=True, exist_ok=True)
    space = SearchSpace.build(base, config.tune.space)
    warmup = max(base.train.phase1_epochs or 1, base.train.epochs // 2)
    study = open_study(config.tune, study_dir, name, warmup_epochs=warmup)
    import optuna
    from optuna.trial import TrialState

    # Trials of every process count, running ones included, so that together they stop at --trials.
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    taken = len(study.get_trials(deepcopy=False, states=counted))
    left = None if config.tune.trials is None else max(config.tune.trials - taken, 0)
    console.print(
        f"Study [bold]{name}[/] in {study_dir.root}: {taken} trial(s) taken, "
        f"{'no limit' if left is None else left} left; {len(space.parameters)} parameters "
        f"({', '.join(p.key for p in space.parameters)})"
    )
    if left != 0:
        limit = (
            [optuna.study.MaxTrialsCallback(config.tune.trials, states=counted)]
            if left is not None
            else None
        )
        study.optimize(
            Objective(base, space, study_dir, config.tune.metric),
            n_trials=left,
            timeout=config.tune.timeout_seconds,
            callbacks=limit,
            catch=(HistoclassError,),
        )
    _report(study, study_dir, config)
    return study_dir.root
