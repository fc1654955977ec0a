"""``report.html``: one self-contained page (images embedded) a pathologist opens to decide on trust."""

from __future__ import annotations

import base64
import io
from datetime import datetime
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from histoclass.atomic import write_text
from histoclass.data.records import ImageRecords
from histoclass.evaluation.curves import plot_curves
from histoclass.runs import EvalDir, ModelInfo, RunDir
from histoclass.runs.config_file import read_run_config
from histoclass.runs.history import read_history

__all__ = ["gallery_items", "render_report"]


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii") if path.is_file() else ""


def gallery_items(
    records: ImageRecords,
    y_true: np.ndarray,
    probabilities: np.ndarray,
    rows: np.ndarray,
    labels: list[str],
    top: int,
) -> list[dict]:
    """The ``top`` highest-loss images (``rows`` index ``records``) as embedded JPEG thumbnails."""
    losses = -np.log(np.clip(probabilities[np.arange(len(y_true)), y_true], 1e-12, 1.0))
    items = []
    for position in np.argsort(-losses)[:top]:
        image = records.open(int(rows[position]))
        image.thumbnail((192, 192))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        predicted = int(probabilities[position].argmax())
        items.append(
            {
                "id": records.ids[int(rows[position])],
                "true": labels[int(y_true[position])],
                "pred": labels[predicted],
                "confidence": float(probabilities[position, predicted]),
                "image": base64.b64encode(buffer.getvalue()).decode("ascii"),
            }
        )
    return items


def _framing(info: ModelInfo) -> str:
    return "" if info.framing == "field" else f"framed around the {info.framing}, "


def _config_rows(model_dir: Path, info: ModelInfo) -> list[tuple[str, str]]:
    rows = [
        ("model", info.name or model_dir.name),
        ("architecture", info.architecture),
        ("head", info.head),
        ("image size", f"{info.image_size} px"),
        ("classes", ", ".join(info.labels)),
        ("parameters", f"{info.parameters:,}" if info.parameters else "–"),
        ("preprocessing", f"{_framing(info)}{info.resize}; mean {info.mean}, std {info.std}"),
    ]
    run = RunDir(model_dir)
    if run.config.is_file():
        config = read_run_config(run)
        train, data, model = config.train, config.data, config.model
        rows += [
            ("training data", str(data.path)),
            ("weights", model.weights or ("ImageNet" if model.pretrained else "from scratch")),
            ("epochs (frozen phase)", f"{train.epochs} ({train.phase1_epochs})"),
            ("fine-tuned blocks", str(train.unfreeze_last)),
            ("learning rate / optimiser", f"{train.lr} / {train.optimizer}"),
            ("batch size", str(data.batch_size)),
            ("augmentation", config.augment.preset),
        ]
    return rows


def render_report(
    out_dir: EvalDir,
    model_dir: Path,
    info: ModelInfo,
    metrics: dict,
    confused: list[tuple[str, str, int]],
    gallery: list[dict],
    data_name: str,
    skipped: int,
) -> Path:
    """Write the report page from the metrics and the PNGs already in ``out_dir``."""
    history = read_history(RunDir(model_dir).history)
    curves = plot_curves(history, out_dir.curves) if history else None

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    intervals = metrics.get("ci95") or {}

    def interval(key: str) -> str:
        bounds = intervals.get(key)
        return f"{bounds[0]:.3f}–{bounds[1]:.3f}" if bounds else ""

    names = {
        "accuracy": "accuracy",
        "balanced_accuracy": "balanced accuracy",
        "macro_f1": "macro F1",
        "roc_auc": "ROC-AUC",
        "log_loss": "log loss",
        "ece": "ECE",
    }
    headline = [("images", str(metrics["n"]), "")]
    headline += [(title, fmt(metrics[key]), interval(key)) for key, title in names.items()]
    template = Environment(
        loader=PackageLoader("histoclass.evaluation", "templates"), autoescape=select_autoescape()
    ).get_template("report.html.j2")
    html = template.render(
        title=f"{info.name or model_dir.name} on {data_name}",
        subtitle=f"{info.architecture}, {info.image_size} px · evaluated {datetime.now():%Y-%m-%d %H:%M}",
        headline=headline,
        warnings=metrics.get("warnings", []),
        resampled=metrics.get("ci95_resampled", "images"),
        overlap=metrics.get("overlap_with_training"),
        without=metrics.get("metrics_without_overlap"),
        skipped=skipped,
        config_rows=_config_rows(model_dir, info),
        curves=_b64(curves) if curves else "",
        per_class=list(metrics["per_class"].items()),
        confusion=_b64(out_dir.confusion_matrix),
        roc=_b64(out_dir.roc),
        reliability=_b64(out_dir.reliability),
        ece=fmt(metrics["ece"]),
        ece_if_perfect=(metrics.get("calibration") or {}).get("ece_if_perfect"),
        confused=confused[:10],
        gallery=gallery,
    )
    return write_text(out_dir.report, html)
