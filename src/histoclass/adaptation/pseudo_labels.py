"""Self-training after few-shot fine-tuning: the new source's unlabelled images the fine-tuned model is
surest of, with its answers as labels, added to the labelled draw for a second fine-tuning.

K labelled images a class leave the model's picture of the new source thin; the same source's other
images, labels unused (as AdaBN's statistics already use them), fill it in. Only the most confident few
per predicted class are taken (twice the labelled count), so that the added labels stay mostly right and no
class is drowned by the commonest one.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from histoclass.data.records import ImageRecords

__all__ = ["PER_SHOT", "confident_per_class", "with_pseudo_labels"]

#: Pseudo-labelled images per predicted class, per labelled image a class.
PER_SHOT = 2


def confident_per_class(probabilities: np.ndarray, per_class: int) -> np.ndarray:
    """Rows of ``probabilities`` (NaN rows are unreadable images) that are among the ``per_class`` most
    confident of their predicted class, in row order."""
    readable = np.flatnonzero(~np.isnan(probabilities).any(axis=1))
    predicted = probabilities[readable].argmax(axis=1)
    confidence = probabilities[readable].max(axis=1)
    chosen = [
        members[np.argsort(-confidence[members], kind="stable")][:per_class]
        for members in (np.flatnonzero(predicted == k) for k in range(probabilities.shape[1]))
    ]
    return np.sort(readable[np.concatenate(chosen)])


def with_pseudo_labels(
    records: ImageRecords,
    labelled: np.ndarray,
    pool: np.ndarray,
    probabilities: np.ndarray,
    shots: int,
) -> tuple[ImageRecords, float | None]:
    """The ``labelled`` rows of ``records`` plus the confident rows of ``pool`` (``probabilities`` in its
    order) labelled by the model; and the share of the added labels that match ``records``' own (a
    report only: --shots reads labelled data), None when none was added."""
    picked = confident_per_class(probabilities, PER_SHOT * shots)
    rows, answers = pool[picked], probabilities[picked].argmax(axis=1).astype(np.int64)
    right = float((answers == records.labels[rows]).mean()) if len(rows) else None
    chosen = records.subset(np.r_[labelled, rows])
    return replace(chosen, labels=np.r_[chosen.labels[: len(labelled)], answers]), right
