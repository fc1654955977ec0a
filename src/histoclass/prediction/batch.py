"""Records -> per-image predictions (probabilities, sets, shift), their CSV and what is said about them.

Columns: ``id, label, confidence, prob_<class>...``; ``--columns id,label`` gives a Kaggle submission.
Unreadable images get an empty label and are listed on stderr; they never stop the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoclass.atomic import write_csv
from histoclass.console import console
from histoclass.data.records import ImageRecords
from histoclass.errors import HistoclassError
from histoclass.inference.predictor import Predictor
from histoclass.shift.verdict import shift_verdict

__all__ = [
    "Predictions",
    "decide",
    "report_errors",
    "report_shift",
    "resolve_threshold",
    "run_predictions",
    "write_predictions_csv",
]


@dataclass
class Predictions:
    """Per-image results in input order; rows with an error have NaN probabilities and logits."""

    ids: list[str]
    probabilities: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    view_logits: np.ndarray | None = None
    sets: np.ndarray | None = None
    decisions: np.ndarray | None = None
    #: Each image's shift score and whether it lies above the run's threshold (None: no reference).
    shift: np.ndarray | None = None
    unlike: np.ndarray | None = None

    @property
    def labels_index(self) -> np.ndarray:
        """The predicted class of each image: the decision threshold's, else the most probable."""
        return (
            self.decisions
            if self.decisions is not None
            else np.nan_to_num(self.probabilities).argmax(axis=1)
        )


def decide(probabilities: np.ndarray, threshold: float | None) -> np.ndarray | None:
    """Two classes and a cut-off: class 1 where its probability reaches it (None: the most probable class)."""
    if threshold is None:
        return None
    return (np.nan_to_num(probabilities[:, 1]) >= threshold).astype(np.int64)


def resolve_threshold(predictor: Predictor, threshold: str | None) -> float | None:
    """``--threshold``: a number, ``auto`` (the run's validation-tuned cut-off) or None; two classes only."""
    if threshold is None:
        return None
    if len(predictor.labels) != 2:
        raise HistoclassError(
            f"--threshold works for two classes; this model has {len(predictor.labels)}"
        )
    if threshold == "auto":
        value = predictor.info.calibration.decision_threshold
        if value is None:
            raise HistoclassError(
                "--threshold auto: this model has no tuned threshold; retrain it, or pass a number"
            )
        return value
    try:
        value = float(threshold)
    except ValueError:
        raise HistoclassError(f"--threshold: '{threshold}' is not a number or auto") from None
    if not 0 < value < 1:
        raise HistoclassError(f"--threshold: {value} is not between 0 and 1")
    return value


def run_predictions(
    predictor: Predictor,
    records: ImageRecords,
    batch_size: int = 64,
    tta: bool = False,
    missing: dict | None = None,
) -> Predictions:
    """Predict ``records`` with a progress bar; ``missing`` marks records known to have no file."""
    from rich.progress import Progress

    classes = len(predictor.labels)
    probabilities = np.full((len(records), classes), np.nan)
    view_logits = np.full((len(records), 8 if tta else 1, classes), np.nan, np.float32)
    errors = dict(missing or {})
    shift = np.full(len(records), np.nan, np.float32) if predictor.shift is not None else None
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("Predicting", total=len(records))
        for result in predictor.predict_records(records, batch_size=batch_size, tta=tta):
            probabilities[result.indices] = result.probabilities
            view_logits[result.indices] = result.view_logits
            if shift is not None and result.shift is not None:
                shift[result.indices] = result.shift
            for index, reason in result.errors.items():
                errors.setdefault(index, reason)
            progress.advance(task, len(result.indices) + len(result.errors))
    sets = predictor.prediction_sets(np.nan_to_num(probabilities))
    unlike = None if shift is None else predictor.shift.reference.unlike(np.nan_to_num(shift))
    return Predictions(
        records.ids, probabilities, errors, view_logits, sets, shift=shift, unlike=unlike
    )


def report_shift(predictions: Predictions, predictor: Predictor) -> str | None:
    """Print and return the batch verdict on the readable images' shift scores (None: no warning)."""
    if predictions.unlike is None:
        return None
    readable = np.asarray(
        [i not in predictions.errors for i in range(len(predictions.ids))], dtype=bool
    )
    verdict = shift_verdict(
        predictions.unlike[readable], predictor.shift.reference.quantile, str(predictor.origin)
    )
    if verdict:
        console.print(f"[yellow]Warning:[/] {verdict}")
    return verdict


def write_predictions_csv(
    out: str | Path,
    predictions: Predictions,
    labels: list[str],
    columns: list[str] | None = None,
    true_labels: list[str] | None = None,
) -> Path:
    """Write predictions atomically; ``columns`` picks and orders a subset (e.g. ``id,label``)."""
    header = [
        "id",
        *(["true_label"] if true_labels else []),
        "label",
        "confidence",
        *(f"prob_{c}" for c in labels),
        *(["prediction_set", "set_size"] if predictions.sets is not None else []),
        *(["shift_score", "unlike_training"] if predictions.shift is not None else []),
    ]
    chosen = columns or header
    unknown = [c for c in chosen if c not in header]
    if unknown:
        raise HistoclassError(
            f"--columns: unknown column {', '.join(unknown)}; choose from {', '.join(header)}"
        )
    rows = []
    chosen_labels = predictions.labels_index
    for i, image_id in enumerate(predictions.ids):
        row = {"id": image_id}
        if true_labels:
            row["true_label"] = true_labels[i]
        probs = predictions.probabilities[i]
        if i in predictions.errors:
            row |= {"label": "", "confidence": "", "prediction_set": "", "set_size": ""}
            row |= {"shift_score": "", "unlike_training": ""}
            row |= {f"prob_{c}": "" for c in labels}
        else:
            best = int(chosen_labels[i])
            row |= {"label": labels[best], "confidence": f"{probs[best]:.9g}"}
            row |= {f"prob_{c}": f"{p:.9g}" for c, p in zip(labels, probs, strict=True)}
            if predictions.sets is not None:
                members = [
                    c for c, inside in zip(labels, predictions.sets[i], strict=True) if inside
                ]
                row |= {"prediction_set": "|".join(members), "set_size": len(members)}
            if predictions.shift is not None:
                row |= {
                    "shift_score": f"{predictions.shift[i]:.4f}",
                    "unlike_training": int(predictions.unlike[i]),
                }
        rows.append([row[c] for c in chosen])
    return write_csv(out, chosen, rows)


def report_errors(predictions: Predictions) -> None:
    """List unreadable inputs on stderr."""
    for i, reason in sorted(predictions.errors.items()):
        console.print(f"[yellow]skipped[/] {predictions.ids[i]}: {reason}")
