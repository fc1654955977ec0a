"""The adapt job: a run adapted to a new source, written as a new run directory beside it.

Without labels: BatchNorm statistics re-estimated on the new images (:mod:`.batchnorm`). With
``--shots K``: the same, then every layer fine-tuned on K labelled images per class (:mod:`.shots`)
and again with the other images the model is then surest of (:mod:`.pseudo_labels`), the calibration
re-fitted on half of the remaining labelled images and the result scored on all of them and on the
other half (one prediction pass). The shift score's reference becomes the new source's images. The
parent run is only read; the new run is built in a hidden folder and appears complete or not at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from torch import nn

from histoclass.adaptation.batchnorm import batchnorm_layers, reestimate_batchnorm
from histoclass.adaptation.pseudo_labels import with_pseudo_labels
from histoclass.adaptation.shots import draw_shots, fine_tune
from histoclass.atomic import building_folder, replace_folder, write_bytes, write_json
from histoclass.calibration.fit import fit_calibration
from histoclass.calibration.temperature import calibrated_probabilities
from histoclass.config import AdaptConfig, AugmentConfig, DataConfig
from histoclass.console import console
from histoclass.data.batches import iter_batches
from histoclass.data.inputs import collect_inputs
from histoclass.data.records import ImageRecords, relabel_by_name
from histoclass.data.sources import read_source
from histoclass.data.stain_normalize import stain_normalized
from histoclass.deploy import open_predictor
from histoclass.errors import HistoclassError
from histoclass.evaluation.metrics import compute_metrics
from histoclass.models.ensemble import Ensemble
from histoclass.models.serialization import load_model, save_model
from histoclass.prediction.batch import run_predictions
from histoclass.runs import ModelInfo, RunDir, create_run_dir, write_labels
from histoclass.runs.config_file import read_run_config
from histoclass.shift.scorer import build_reference

__all__ = ["adapt"]

#: Fewer new-source images than this give BatchNorm statistics too noisy to replace the training ones.
MIN_IMAGES = 16


def _unlabelled(data: str) -> ImageRecords:
    """Every readable-looking image under ``data`` (a folder, files, or a CSV of ids), labels unused."""
    if not Path(data).exists():
        raise HistoclassError(
            f"--data: no such file or folder '{data}'; pass the new source's images"
        )
    ids, paths = collect_inputs([data])
    found = [(i, p) for i, p in zip(ids, paths, strict=True) if p is not None]
    return ImageRecords(
        ids=[i for i, _ in found], labels=np.full(len(found), -1), paths=[p for _, p in found]
    )


def _labelled(config: AdaptConfig, labels: list[str]) -> ImageRecords:
    given = {
        key: getattr(config, key)
        for key in ("image_dir", "id_column", "label_column")
        if getattr(config, key)
    }
    source = read_source(config.data, DataConfig(path=config.data, **given))
    if not set(source.classes) <= set(labels):
        extra = ", ".join(sorted(set(source.classes) - set(labels)))
        raise HistoclassError(
            f"--data has classes the model does not know ({extra}); its classes: {', '.join(labels)}"
        )
    records = ImageRecords.concatenate(list(source.splits.values()))
    return relabel_by_name(records, source.classes, labels)


def _pixel_batches(records: ImageRecords, info: ModelInfo, batch_size: int):
    for batch in iter_batches(records, info.image_size, batch_size):
        if batch.indices:
            yield stain_normalized(batch.pixels, info.stain)


def _score_rest(run: RunDir, rest: ImageRecords, batch_size: int, seed: int) -> dict:
    """Predict the labelled images not fine-tuned on once (8 views): fit temperature and sets on a
    stratified half and write them into the run; score all of them, and the other half, with the new
    calibration."""
    info = ModelInfo.load(run.model_info)
    predictions = run_predictions(
        open_predictor(run.root, "torch", shift=False), rest, batch_size, tta=True
    )
    rows = np.asarray([i for i in range(len(rest)) if i not in predictions.errors], dtype=np.int64)
    logits, labels = predictions.view_logits[rows], rest.labels[rows]
    strata = labels if np.bincount(labels).min(initial=2) >= 2 else None
    fit_half, check_half = train_test_split(
        np.arange(len(rows)), test_size=0.5, random_state=seed, stratify=strata
    )
    calibration = fit_calibration(logits[fit_half], labels[fit_half], 0.9, False, "adapt --shots")
    info.model_copy(update={"calibration": calibration}).save(run.model_info)
    probabilities = calibrated_probabilities(logits, calibration.temperature)
    return {
        "calibration": {"images": len(fit_half), "temperature": calibration.temperature},
        "rest": {"images": len(rows), **compute_metrics(labels, probabilities, info.labels)},
        "held_out_half": {
            "images": len(check_half),
            **compute_metrics(labels[check_half], probabilities[check_half], info.labels),
        },
    }


def _few_shot(
    model: nn.Module,
    info: ModelInfo,
    records: ImageRecords,
    draw: tuple[np.ndarray, np.ndarray],
    augment: AugmentConfig,
    config: AdaptConfig,
    built: RunDir,
) -> tuple[nn.Module, dict]:
    """Fine-tuning on the labelled draw; with ``--pseudo-labels``, again on the draw plus the other
    images the first fine-tuning is surest of (:mod:`.pseudo_labels`), predicted from ``built``.
    Returns the model and what to record of it."""
    shots, rest = draw

    def tune(start: nn.Module, chosen: ImageRecords) -> nn.Module:
        return fine_tune(
            start,
            chosen,
            info.image_size,
            augment,
            config.epochs,
            config.lr,
            config.seed,
            info.stain,
            head_only=config.tune == "head",
        )

    model = tune(model, records.subset(shots))
    if not config.pseudo_labels or not len(rest):
        return model, {}
    save_model(model, info, built.root)
    probabilities = run_predictions(
        open_predictor(built.root, "torch", shift=False),
        records.subset(rest),
        config.batch_size,
        tta=True,
    ).probabilities
    chosen, right = with_pseudo_labels(records, shots, rest, probabilities, config.shots)
    added = len(chosen) - len(shots)
    console.print(
        f"Pseudo-labels: the {added} other images the model is surest of added to the "
        f"{len(shots)} labelled ones"
        + ("" if right is None else f" ({right:.0%} of their labels right)")
    )
    return tune(model, chosen), {"pseudo_labelled": added, "pseudo_labels_right": right}


def _copy_run_files(parent: RunDir, built: RunDir) -> None:
    """What makes the new folder a run like any other: its config (the parent's training) and split."""
    for name in ("config", "split", "labels"):
        source = getattr(parent, name)
        if source.is_file():
            write_bytes(getattr(built, name), source.read_bytes())


def adapt(config: AdaptConfig) -> RunDir:
    """Adapt ``config.run`` to ``config.data``; returns the new run directory."""
    parent = RunDir(Path(config.run))
    if not parent.is_trained():
        raise HistoclassError(f"'{config.run}' is not a finished run directory; pass runs/NAME")
    model, info = load_model(parent.root)
    if not batchnorm_layers(model):
        raise HistoclassError(
            f"'{info.architecture}' has no BatchNorm layers to adapt; try --shots K instead"
        )
    if config.shots and isinstance(model, Ensemble):
        raise HistoclassError(
            "--shots fine-tunes one model; adapt a fold of this ensemble (runs/NAME/folds/1)"
        )
    records = _labelled(config, info.labels) if config.shots else _unlabelled(config.data)
    records = records.framed(info.framing)
    if len(records) < MIN_IMAGES:
        raise HistoclassError(
            f"--data: {len(records)} images; adapting needs at least {MIN_IMAGES} of the new source"
        )
    shots, rest = (
        draw_shots(records, config.shots, info.labels, config.seed)
        if config.shots
        else (None, None)
    )
    seen = reestimate_batchnorm(
        model, _pixel_batches(records, info, config.batch_size), info.mean, info.std
    )
    console.print(
        f"BatchNorm statistics re-estimated on {seen} images of {config.data} (labels unused)"
    )
    record: dict = {
        "parent": str(parent.root.resolve()),
        "data": config.data,
        "images": seen,
        "batchnorm": True,
    }
    runs_dir = Path(config.runs_dir) if config.runs_dir else parent.root.parent
    name = (
        config.name or f"{parent.root.name}-{f'{config.shots}shot' if config.shots else 'adapted'}"
    )
    new_info = info.model_copy(update={"name": name, "parent": str(parent.root.resolve())})
    with building_folder(runs_dir, ".adapt-") as folder:
        built = RunDir(folder)
        _copy_run_files(parent, built)
        if shots is not None:
            augment = (
                read_run_config(parent).augment if parent.config.is_file() else AugmentConfig()
            )
            model, pseudo = _few_shot(
                model, new_info, records, (shots, rest), augment, config, built
            )
            record |= {"shots": config.shots, "labelled_images": len(shots), "tune": config.tune}
            record |= {"epochs": config.epochs, "lr": config.lr}
            record |= {"pseudo_labels": config.pseudo_labels, **pseudo}
        save_model(model, new_info, built.root)
        write_labels(built.labels, info.labels)
        halves = np.random.default_rng(config.seed).permutation(len(records))
        # the new source's images, labels unused: half as reference, half held out
        middle = len(records) // 2
        reference, held = (
            records.subset(np.sort(halves[:middle])),
            records.subset(np.sort(halves[middle:])),
        )
        build_reference(built, reference, held, config.seed, fitted_on="adapted")
        if rest is not None and len(rest) >= 2 * info.num_classes:
            record |= _score_rest(built, records.subset(rest), config.batch_size, config.seed)
        write_json(built.adaptation, record)
        target = create_run_dir(runs_dir, name)
        replace_folder(built.root, target.root)
    _report(target, record)
    return target


def _report(run: RunDir, record: dict) -> None:
    rest = record.get("rest")
    if rest:
        console.print(
            f"On the {rest['images']} labelled images not used to fine-tune: accuracy "
            f"{rest['accuracy']:.3f}, "
            f"balanced accuracy {rest['balanced_accuracy']:.3f}"
        )
    console.print(f"Adapted run: [bold]{run.root}[/] (parent {record['parent']}, unchanged)")
