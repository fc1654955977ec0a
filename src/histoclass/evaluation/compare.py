"""The compare job: runs side by side (architecture, size, parameters, time, best epoch, metrics).

Metrics are each run's validation metrics, or an evaluation of every run on ``--data`` when given.
"""

from __future__ import annotations

import json
from pathlib import Path

from histoclass.atomic import write_csv, write_text
from histoclass.config import CompareConfig, EvaluateConfig
from histoclass.console import console
from histoclass.errors import HistoclassError
from histoclass.evaluation.figures import plt, save_figure
from histoclass.runs import EvalDir, ModelInfo, RunDir, StudyDir

__all__ = ["compare"]

COLUMNS = [
    "run",
    "architecture",
    "image_size",
    "parameters_m",
    "train_minutes",
    "best_epoch",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "roc_auc",
    "log_loss",
]
_BARS = ["accuracy", "macro_f1", "roc_auc"]


def _read_metrics(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise HistoclassError(
            f"'{path}' is damaged ({str(error).splitlines()[0]}); train or evaluate again"
        ) from None


def _row(path: Path, data: str | None, split: str | None) -> dict:
    run = RunDir(path)
    if not run.model_info.is_file():
        raise HistoclassError(
            f"'{path}' is not a finished run directory (no {run.model_info.name})"
        )
    info = ModelInfo.load(run.model_info)
    trained = _read_metrics(run.metrics) if run.metrics.is_file() else {}
    if data:
        from histoclass.evaluation.job import evaluate

        evaluated = EvalDir(evaluate(EvaluateConfig(model=str(path), data=data, split=split)))
        metrics = _read_metrics(evaluated.metrics)
    else:
        metrics = {key.removeprefix("val_"): value for key, value in trained.items()}
    return {
        "run": path.name,
        "architecture": info.architecture,
        "image_size": info.image_size,
        "parameters_m": round(info.parameters / 1e6, 2),
        "train_minutes": round(trained.get("train_seconds", float("nan")) / 60, 2),
        "best_epoch": trained.get("best_epoch"),
        **{key: metrics.get(key) for key in COLUMNS[6:]},
    }


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _plot(rows: list[dict], out: Path) -> Path:
    figure, axis = plt.subplots(figsize=(max(5, 1.6 * len(rows) + 2), 4))
    width = 0.8 / len(_BARS)
    for k, metric in enumerate(_BARS):
        values = [row[metric] or 0.0 for row in rows]
        positions = [i + (k - (len(_BARS) - 1) / 2) * width for i in range(len(rows))]
        axis.bar(positions, values, width=width, label=metric)
    axis.set_xticks(
        range(len(rows)), [f"{r['run']}\n{r['architecture']}" for r in rows], fontsize=8
    )
    axis.set_ylim(0, 1)
    axis.set_title("Runs compared")
    axis.legend(fontsize=8)
    return save_figure(figure, out)


#: Trials of a study put side by side: its best ones.
STUDY_TOP = 5


def _runs(path: Path) -> list[Path]:
    """A run directory as itself; a study directory (``tune``'s) as its best complete trials, best first."""
    study = StudyDir(path)
    if not study.is_study():
        return [path]
    runs = study.top_runs(STUDY_TOP)
    if not runs:
        raise HistoclassError(f"'{path}': no trial of this study has finished yet")
    return runs


def compare(config: CompareConfig) -> Path:
    """Write ``compare.csv``, ``compare.md`` and ``compare.png`` into ``config.out`` and print the table."""
    from rich.table import Table

    data = config.data
    paths = [run for given in config.runs for run in _runs(Path(given))]
    rows = [_row(run, data, config.split) for run in paths]
    out_dir = Path(config.out) if config.out else paths[0].parent / "compare"
    write_csv(out_dir / "compare.csv", COLUMNS, ([row[c] for c in COLUMNS] for row in rows))
    markdown = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    markdown += ["| " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |" for row in rows]
    write_text(out_dir / "compare.md", "\n".join(markdown) + "\n")
    _plot(rows, out_dir / "compare.png")
    table = Table(title="Runs compared" + (f" on {data}" if data else " (validation metrics)"))
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("run", "architecture") else "right")
    for row in rows:
        table.add_row(*(_fmt(row[c]) for c in COLUMNS))
    console.print(table)
    console.print(f"Comparison written to [bold]{out_dir}[/]")
    return out_dir
