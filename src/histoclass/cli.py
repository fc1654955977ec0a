"""The ``histoclass`` command: one verb per job. It parses, builds a config and calls a job: no logic here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from histoclass.errors import HistoclassError

app = typer.Typer(
    name="histoclass",
    help="Train, evaluate, export and serve transfer-learning classifiers for histology and microscopy images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

CompileFlag = Annotated[
    bool, typer.Option("--compile/--no-compile", help="torch.compile a PyTorch model: faster batches.")
]
DATA_HELP = "Class-folder dataset, labels CSV (with --image-dir), MedMNIST-style .npz, or medmnist:NAME."


def _unfreeze(value: str | None) -> int | str | None:
    if value is None or value == "all":
        return value
    if not value.isdigit():
        raise HistoclassError(f"--unfreeze-last: '{value}' is not a count or 'all'")
    return int(value)


@app.command()
def train(
    data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
    image_dir: Annotated[str | None, typer.Option(help="Image folder for a labels CSV.")] = None,
    id_column: Annotated[str | None, typer.Option(help="CSV id column [default: id].")] = None,
    label_column: Annotated[str | None, typer.Option(help="CSV label column [default: label].")] = None,
    group_column: Annotated[str | None, typer.Option(help="CSV column naming each image's group.")] = None,
    group_by: Annotated[
        str | None, typer.Option(help="Regex over the image path; its first capture group names the group.")
    ] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Validation share without a val split [0.2].")] = None,
    model: Annotated[str | None, typer.Option(help="timm model name or alexnet [mobilenetv2_100].")] = None,
    pretrained: Annotated[bool | None, typer.Option(help="Start from ImageNet weights [on].")] = None,
    weights: Annotated[str | None, typer.Option(help="Local checkpoint (.safetensors/.pth) for offline use.")] = None,
    head: Annotated[str | None, typer.Option(help="linear | gap-dense | gap-bn-dense [linear].")] = None,
    image_size: Annotated[int | None, typer.Option(help="Square input size in pixels [224].")] = None,
    augment: Annotated[str | None, typer.Option(help="Preset: histology | keras | tfdata | none.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Total epochs, both phases [30].")] = None,
    phase1_epochs: Annotated[int | None, typer.Option(help="Frozen-backbone epochs [epochs/5].")] = None,
    unfreeze_last: Annotated[
        str | None, typer.Option(help="Backbone blocks fine-tuned in phase 2, or all [3].")
    ] = None,
    finetune_lr_scale: Annotated[float | None, typer.Option(help="Backbone lr / head lr [0.1].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch and device [32].")] = None,
    lr: Annotated[float | None, typer.Option(help="Head learning rate [1e-3].")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw | adam | sgd [adamw].")] = None,
    scheduler: Annotated[str | None, typer.Option(help="plateau | cosine | none [plateau].")] = None,
    class_weights: Annotated[str | None, typer.Option(help="none | balanced [none].")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for splits, init and augmentation [42].")] = None,
    workers: Annotated[int | None, typer.Option(help="Data loader processes [CPUs - 1].")] = None,
    cache: Annotated[
        str | None, typer.Option(help="none | ram | disk: decode and resize every image once [none].")
    ] = None,
    compile_: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model: faster steps [off].")
    ] = None,
    accelerator: Annotated[str | None, typer.Option(help="auto | cpu | gpu [auto].")] = None,
    devices: Annotated[str | None, typer.Option(help="auto, a count, or ids such as 0,1 [auto].")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Machines, for torchrun --nnodes or SLURM [1].")] = None,
    sync_batchnorm: Annotated[bool | None, typer.Option(help="BatchNorm statistics across processes [off].")] = None,
    checkpoint_every_steps: Annotated[
        int | None, typer.Option(help="Also checkpoint every K training steps, mid-epoch.")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue an interrupted run (runs/NAME) from its last checkpoint.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name [dataset-model]; never overwritten.")] = None,
    runs_dir: Annotated[str | None, typer.Option(help="Parent folder of run directories [runs].")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config; flags and --set override it.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any config value: section.key=value (repeatable)."),
    ] = None,
) -> None:
    """Train a classifier: check the data, split it, fit in two phases, write runs/NAME/."""
    from histoclass.config import apply_overrides, build_config, load_config
    from histoclass.training.job import train as run_training

    flags = {
        "data.path": data,
        "data.image_dir": image_dir,
        "data.id_column": id_column,
        "data.label_column": label_column,
        "data.group_column": group_column,
        "data.group_by": group_by,
        "data.val_fraction": val_fraction,
        "data.image_size": image_size,
        "data.batch_size": batch_size,
        "data.workers": workers,
        "data.cache": cache,
        "augment.preset": augment,
        "model.name": model,
        "model.pretrained": pretrained,
        "model.weights": weights,
        "model.head": head,
        "train.epochs": epochs,
        "train.phase1_epochs": phase1_epochs,
        "train.unfreeze_last": _unfreeze(unfreeze_last),
        "train.finetune_lr_scale": finetune_lr_scale,
        "train.lr": lr,
        "train.optimizer": optimizer,
        "train.scheduler": scheduler,
        "train.class_weights": class_weights,
        "train.seed": seed,
        "train.accelerator": accelerator,
        "train.devices": devices,
        "train.num_nodes": num_nodes,
        "train.sync_batchnorm": sync_batchnorm,
        "train.checkpoint_every_steps": checkpoint_every_steps,
        "train.compile": compile_,
        "run.name": name,
        "run.runs_dir": runs_dir,
    }
    if resume is not None:
        run_training(resume=resume)
        return
    values = apply_overrides(load_config(config), {k: v for k, v in flags.items() if v is not None})
    run_training(build_config(apply_overrides(values, set_ or [])))


@app.command("check-data")
def check_data(
    data: Annotated[str, typer.Argument(help=DATA_HELP)],
    image_dir: Annotated[str | None, typer.Option(help="Image folder for a labels CSV.")] = None,
    id_column: Annotated[str, typer.Option(help="CSV id column.")] = "id",
    label_column: Annotated[str, typer.Option(help="CSV label column.")] = "label",
) -> None:
    """Count images per class and split, list sizes and modes, and report every unreadable file."""
    from histoclass.config import DataConfig
    from histoclass.data.checks import check_source, print_report
    from histoclass.data.sources import read_source

    config = DataConfig(path=data, image_dir=image_dir, id_column=id_column, label_column=label_column)
    report = check_source(read_source(data, config))
    print_report(report)
    if report.empty_classes():
        raise HistoclassError(f"class {', '.join(report.empty_classes())} has no readable image")


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="Run directory (runs/NAME), model.onnx or model.tflite.")],
    data: Annotated[str, typer.Option(help="Labelled data: " + DATA_HELP)],
    split: Annotated[str | None, typer.Option(help="test | val | train [test, else val, else all].")] = None,
    image_dir: Annotated[str | None, typer.Option(help="Image folder for a labels CSV.")] = None,
    id_column: Annotated[str, typer.Option(help="CSV id column.")] = "id",
    label_column: Annotated[str, typer.Option(help="CSV label column.")] = "label",
    tta: Annotated[bool, typer.Option(help="Average over the 8 flips and 90-degree rotations.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    compile_: CompileFlag = False,
) -> None:
    """Score a model on labelled data: metrics.json, plots, predictions.csv and report.html in eval/."""
    from histoclass.evaluation.job import evaluate as run_evaluation

    run_evaluation(model, data, split, image_dir, id_column, label_column, tta, batch_size, compile_)


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Run directory (runs/NAME), model.onnx or model.tflite.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or a CSV of ids.")],
    out: Annotated[Path, typer.Option(help="Predictions CSV to write.")] = Path("predictions.csv"),
    image_dir: Annotated[str | None, typer.Option(help="Image folder for a CSV of ids.")] = None,
    id_column: Annotated[str, typer.Option(help="CSV id column.")] = "id",
    columns: Annotated[
        str | None, typer.Option(help="Columns to keep, e.g. id,label [id,label,confidence,prob_*].")
    ] = None,
    tta: Annotated[bool, typer.Option(help="Average over the 8 flips and 90-degree rotations.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    compile_: CompileFlag = False,
) -> None:
    """Predict classes for images: id, label, confidence and one probability per class, as CSV."""
    from histoclass.inference.job import predict as run_prediction

    chosen = [c.strip() for c in columns.split(",")] if columns else None
    run_prediction(model, inputs, out, image_dir, id_column, chosen, batch_size, tta, compile_)


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="Run directories to put side by side.")],
    data: Annotated[str | None, typer.Option(help="Evaluate every run on this labelled data.")] = None,
    split: Annotated[str | None, typer.Option(help="Split of --data to use.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder [runs/compare].")] = None,
) -> None:
    """Compare runs: architecture, size, parameters, time, best epoch and metrics; CSV, Markdown, chart."""
    from histoclass.evaluation.compare import compare as run_comparison

    run_comparison(runs, data, split, out)


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="Run directory (runs/NAME).")],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx | tflite | torchscript.")] = "onnx",
    check_data: Annotated[
        str | None, typer.Option(help="Images to check parity on [the run's validation images].")
    ] = None,
    int8: Annotated[bool, typer.Option(help="Also write an int8 ONNX model (static quantisation).")] = False,
    nhwc: Annotated[bool, typer.Option(help="Take NHWC input (mobile camera pipelines).")] = False,
    images: Annotated[int, typer.Option(help="How many images the parity check uses.")] = 256,
) -> None:
    """Export to ONNX, TFLite or TorchScript with labels.txt and preprocess.json, checked against PyTorch."""
    from histoclass.export.job import export as run_export

    run_export(run, format, check_data, int8, nhwc, images)


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="Run directory (runs/NAME) or an exported model.onnx.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for the whole network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes, each with its own copy of the model.")] = 1,
    api_key: Annotated[str | None, typer.Option(help="Require this X-API-Key header on /api/ (not /health).")] = None,
    max_file_mb: Annotated[float, typer.Option(help="Largest accepted upload, MB.")] = 20.0,
    max_files: Annotated[int, typer.Option(help="Most images in one request.")] = 64,
    max_megapixels: Annotated[float, typer.Option(help="Largest accepted image (decompression-bomb guard).")] = 50.0,
    keep_uploads: Annotated[
        str | None, typer.Option(help="Save every upload into this folder (off: none kept).")
    ] = None,
) -> None:
    """Serve the Histology Classifier web page and REST API (POST /api/predict, /api/explain; docs at /docs)."""
    from histoclass.serving.app import ServeSettings
    from histoclass.serving.job import serve as run_server

    settings = ServeSettings(
        model=model, api_key=api_key, max_file_mb=max_file_mb, max_files=max_files,
        max_megapixels=max_megapixels, keep_uploads=keep_uploads,
    )  # fmt: skip
    run_server(settings, host, port, workers)


@app.command()
def bench(
    data: Annotated[Path, typer.Option(help="Class-folder dataset of images (JPEGs) to load.")],
    model: Annotated[str, typer.Option(help="timm model name.")] = "mobilenetv2_100",
    image_size: Annotated[int | None, typer.Option(help="Input size [224 on a GPU, 64 on CPU].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch [256 on a GPU, 32 on CPU].")] = None,
    warmup: Annotated[int, typer.Option(help="Batches run before timing starts.")] = 10,
    steps: Annotated[int, typer.Option(help="Timed batches for the ceiling and naive stages.")] = 50,
    compile_: CompileFlag = False,
    cache: Annotated[str, typer.Option(help="Cache of the *_cache stages: ram | disk.")] = "ram",
    augment: Annotated[str, typer.Option(help="Augmentation of both pipelines (preset).")] = "keras",
    workers: Annotated[int | None, typer.Option(help="histoclass's loader processes [CPUs - 1].")] = None,
    stages: Annotated[str | None, typer.Option(help="Comma-separated subset of the stages [all].")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for bench.json and bench.md [runs/bench/MODEL-SIZE].")
    ] = None,
) -> None:
    """Measure training and inference speed: compute ceiling, naive ImageFolder pipeline, histoclass's own."""
    import torch

    from histoclass.benchmark.job import STAGES
    from histoclass.benchmark.job import bench as run_bench
    from histoclass.benchmark.stages import BenchSettings

    if cache not in ("ram", "disk"):
        raise HistoclassError(f"--cache: '{cache}' is not ram or disk")
    gpu = torch.cuda.is_available()
    size, batch = image_size or (224 if gpu else 64), batch_size or (256 if gpu else 32)
    settings = BenchSettings(
        data=data, model=model, image_size=size, batch_size=batch, warmup=warmup, steps=steps,
        compile=compile_, cache=cache, workers=workers, augment=augment,
    )  # fmt: skip
    chosen = [s.strip() for s in stages.split(",")] if stages else list(STAGES)
    run_bench(settings, chosen, out or Path("runs") / "bench" / f"{model}-{settings.image_size}px")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except HistoclassError as error:
        print(f"histoclass: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
