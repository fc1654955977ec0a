"""Configs of the verbs other than ``train``: flat, one per verb, each field also a flag or argument.

A new verb is one config class here plus one job function taking it (see :mod:`histoclass.cli`).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import field_validator

from histoclass.config.loading import ConfigModel, option

__all__ = [
    "ENGINE_CHOICES",
    "AdaptConfig",
    "AuditOptions",
    "BenchConfig",
    "CalibrateConfig",
    "CheckDataConfig",
    "CompareConfig",
    "EmbedConfig",
    "EvaluateConfig",
    "ExportConfig",
    "InferenceOptions",
    "LabelledData",
    "ModelsConfig",
    "PredictConfig",
    "ServeConfig",
    "SlideConfig",
]

Engine = Literal["auto", "torch", "onnx", "openvino"]
#: What ``--engine`` takes, written once: ``deploy.open_predictor`` checks against the same names.
ENGINE_CHOICES: tuple[str, ...] = get_args(Engine)
MODEL_HELP = "run directory (runs/NAME), model.onnx, model.tflite or model.pt"


class LabelledData(ConfigModel):
    """How a labels CSV is read; None means the run's own setting (or the default)."""

    image_dir: str | None = option(
        None, "image folder for a labels CSV (default: the CSV's folder)"
    )
    id_column: str | None = option(None, "CSV column holding the image id [id]")
    label_column: str | None = option(None, "CSV column holding the class label [label]")


class InferenceOptions(ConfigModel):
    """How images go through a model: shared by every verb that predicts."""

    batch_size: int = option(64, "images per batch", ge=1)
    # On by default: it raised accuracy and AUC on unseen cells in every recipe row (docs/benchmarks.md).
    tta: bool = option(
        True, "average over the 8 flips and 90-degree rotations (--no-tta: one view, 8x faster)"
    )
    compile: bool = option(
        False, "torch.compile a PyTorch model: faster batches after a slow first one"
    )
    engine: Engine = option("auto", "auto (fastest checked engine) | torch | onnx | openvino")


class AuditOptions(ConfigModel):
    """How near-duplicates are searched (check-data --duplicates, --group-by auto, evaluate's
    overlap check)."""

    threshold: float | None = option(
        None,
        "least cosine similarity (whitened embeddings) of a candidate (default: every neighbour)",
        gt=0,
        le=1,
    )
    neighbours: int = option(10, "candidates per image (its most similar images)", ge=1)
    min_inliers: int = option(
        8, "matched keypoints that confirm a copy (0: embedding similarity alone)", ge=0
    )
    audit_size: int = option(96, "image size the audit embeds at", ge=32, le=1024)


class CheckDataConfig(LabelledData, AuditOptions):
    """``histoclass check-data``: the data scan, and with ``--duplicates`` the near-duplicate audit."""

    data: str = option(..., "class folders, labels CSV, .npz or medmnist:NAME", argument=True)
    duplicates: bool = option(
        False, "also find near-duplicates: clusters, copies across splits, mixed labels"
    )
    model: str | None = option(
        None, "backbone that embeds: a timm name or a run directory [the train default]"
    )
    weights: str | None = option(None, "local weights for --model (offline machines)")
    against: str | None = option(None, "another dataset: report the copies it shares with DATA")
    out: str | None = option(
        None, "folder for duplicates.csv and duplicates.html [DATA-NAME-duplicates]"
    )


class EvaluateConfig(InferenceOptions, LabelledData):
    """``histoclass evaluate``: CSV settings default to the run's own."""

    model: str = option(..., MODEL_HELP, argument=True)
    data: str = option(..., "labelled data: class folders, labels CSV, .npz or medmnist:NAME")
    split: str | None = option(None, "test | val | train [test, else val, else all]")
    overlap_check: bool = option(
        True, "look for copies of these images among the run's training images"
    )
    group_by: str | None = option(
        "auto",
        "groups the intervals resample: auto (near-duplicate clusters), a regex over paths, or none",
    )


class PredictConfig(InferenceOptions):
    """``histoclass predict``."""

    model: str = option(..., MODEL_HELP, argument=True)
    inputs: list[str] = option(
        ..., "image files, folders (recursive) or CSVs of ids", argument=True
    )
    out: str = option("predictions.csv", "predictions CSV to write")
    image_dir: str | None = option(
        None, "image folder for a CSV of ids (default: the CSV's folder)"
    )
    id_column: str = option("id", "CSV column holding the image id")
    columns: str | None = option(
        None, "columns to keep, e.g. id,label [id,label,confidence,prob_*,...]"
    )
    threshold: str | None = option(
        None, "two classes: P(second class) cut-off, or auto (tuned on validation)"
    )


class SlideConfig(InferenceOptions):
    """``histoclass slide``: tile whole slides, classify the tissue tiles, map them."""

    model: str = option(..., MODEL_HELP, argument=True)
    slides: list[str] = option(
        ..., "slide files (.svs, .tif, .ndpi, ...) or folders of slides", argument=True
    )
    out: str = option("slides", "folder for one sub-folder per slide and the index")
    mpp: float | None = option(None, "microns per pixel to tile at [the run's --train-mpp]", gt=0)
    level: int | None = option(
        None, "tile at this pyramid level instead of a physical resolution", ge=0
    )
    tile_size: int | None = option(
        None, "tile side in pixels at the tiling resolution [the training images']", ge=8
    )
    overlap: int = option(0, "pixels shared by neighbouring tiles", ge=0)
    min_tissue: float = option(0.5, "keep tiles with at least this share of tissue", ge=0, le=1)
    tissue_filter: bool = option(True, "classify only tissue tiles (off: every tile)")
    thumbnail: int = option(
        2048, "longest side of the thumbnail and heatmaps, pixels", ge=64, le=16384
    )
    threads: int | None = option(None, "tile-reading threads [one per core]", ge=1)
    # Off for slides: 10^5 tiles at 8 views each; neighbouring tiles already smooth a map.
    tta: bool = option(False, "average over the 8 flips and 90-degree rotations (8x the time)")
    shift: bool = option(
        False,
        "also score each tile's shift from the training images (runs with a reference; about 2x the time)",
    )


class CalibrateConfig(InferenceOptions, LabelledData):
    """``histoclass calibrate``: re-fit temperature and prediction sets on local labelled images."""

    run: str = option(..., "run directory (runs/NAME) to re-calibrate", argument=True)
    data: str = option(
        ..., "local labelled images: class folders, labels CSV, .npz or medmnist:NAME"
    )
    split: str | None = option(None, "split of --data to use [test, else val, else all]")
    coverage: float = option(0.9, "prediction sets hold the true class this often", gt=0, lt=1)
    mondrian: bool = option(False, "one set threshold per class, so coverage holds for each class")
    seed: int = option(0, "seed of the two halves the before/after check uses")


class AdaptConfig(LabelledData):
    """``histoclass adapt``: a run adapted to a new source (another lab, scanner, stain), as a new
    run directory."""

    run: str = option(..., "run directory (runs/NAME) to adapt; it is never changed", argument=True)
    data: str = option(
        ..., "the new source's images: any folder (labels unused), or labelled data with --shots"
    )
    shots: int | None = option(
        None,
        "labelled images per class to fine-tune on (the rest of --data scores the result)",
        ge=1,
    )
    tune: Literal["head", "all"] = option("all", "--shots: fine-tune the head only, or every layer")
    pseudo_labels: bool = option(
        True,
        "--shots: fine-tune again with the labelled images plus the other --data images the model is "
        "then surest of (twice as many a class, labels unused, the model's answers as labels)",
    )
    epochs: int = option(30, "--shots: fine-tuning epochs over the labelled images", ge=1)
    lr: float = option(2e-4, "--shots: learning rate of the whole network", gt=0)
    name: str | None = option(None, "name of the adapted run [NAME-adapted]")
    runs_dir: str | None = option(None, "parent folder of the adapted run [the run's own parent]")
    batch_size: int = option(32, "images per batch", ge=1)
    seed: int = option(0, "seed of the labelled draw and the fine-tuning")


class CompareConfig(ConfigModel):
    """``histoclass compare``."""

    runs: list[str] = option(
        ..., "run directories, or tune study directories (their 5 best trials)", argument=True
    )
    data: str | None = option(None, "evaluate every run on this labelled data")
    split: str | None = option(None, "split of --data to use")
    out: str | None = option(None, "output folder [runs/compare]")


class ExportConfig(ConfigModel):
    """``histoclass export``."""

    run: str = option(..., "run directory (runs/NAME)", argument=True)
    format: str = option("onnx", "onnx | openvino | tflite | torchscript")
    check_data: str | None = option(None, "images to check parity on [the run's validation images]")
    int8: bool = option(False, "also write an int8 ONNX model (static quantisation)")
    nhwc: bool = option(False, "take NHWC input (mobile camera pipelines)")
    images: int = option(256, "how many images the parity check uses", ge=1)


class ServeConfig(ConfigModel):
    """``histoclass serve``."""

    model: str = option(..., "run directory (runs/NAME) or an exported model.onnx", argument=True)
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0 for the whole network)")
    port: int = option(8000, "port", ge=1, le=65535)
    workers: int = option(1, "server processes, each with its own copy of the model", ge=1)
    engine: Engine = option("auto", "auto (fastest checked engine) | torch | onnx | openvino")
    api_key: str | None = option(
        None, "require this X-API-Key header on everything but the page and health"
    )
    max_file_mb: float = option(20.0, "largest accepted upload, MB", gt=0)
    max_files: int = option(64, "most images in one request", ge=1)
    max_megapixels: float = option(50.0, "largest accepted image (decompression-bomb guard)", gt=0)
    max_request_mb: float | None = option(
        None, "largest request body, MB [5 (or --max-files if fewer) x max file MB]", gt=0
    )
    max_request_megapixels: float = option(300.0, "most pixels of all images in one request", gt=0)
    decode_megapixels: float | None = option(
        None,
        "most pixels decoded at once by a server process, over all requests [2 x --max-megapixels]",
        gt=0,
    )
    keep_uploads: str | None = option(
        None, "save every accepted upload into this folder (off: none kept)"
    )
    body_timeout: float = option(
        30.0, "seconds a client may take between two parts of its request body", gt=0
    )
    tta: bool = option(
        True, "average over the 8 flips and 90-degree rotations (--no-tta: one view)"
    )
    slides: str | None = option(
        None, "folder of whole slides to view at /slides with the model's map over them"
    )
    slide_maps: str = option(
        "slides", "folder of slide maps (histoclass slide --out): reused, new ones written"
    )

    @property
    def max_bytes(self) -> int:
        return int(self.max_file_mb * 1e6)

    @property
    def max_request_bytes(self) -> int:
        """The whole body: five files (or ``max_files``) at their largest, plus the multipart framing; many
        files of the usual size (a cell crop is 10-100 kB) fit well within it."""
        if self.max_request_mb is not None:
            return int(self.max_request_mb * 1e6)
        return min(self.max_files, 5) * (self.max_bytes + 4096)

    @property
    def decode_pixels(self) -> int:
        return int((self.decode_megapixels or 2 * self.max_megapixels) * 1e6)


class BenchConfig(ConfigModel):
    """``histoclass bench``: sizes default to 224 px / batch 256 on a GPU, 64 px / batch 32 on CPU."""

    data: str = option(..., "class-folder dataset of images (JPEGs) to load")
    model: str = option("mobilenetv2_100", "timm model name")
    image_size: int | None = option(None, "input size [224 on a GPU, 64 on CPU]", ge=16)
    batch_size: int | None = option(None, "images per batch [256 on a GPU, 32 on CPU]", ge=1)
    warmup: int = option(10, "batches run before timing starts", ge=0)
    steps: int = option(50, "timed batches for the ceiling and naive stages", ge=1)
    compile: bool = option(False, "torch.compile the model")
    cache: str = option("ram", "cache of the *_cache stages: ram | disk")
    augment: Literal["none", "keras", "tfdata", "histology"] = option(
        "keras", "augmentation of both pipelines (preset)"
    )
    workers: int | None = option(
        None, "histoclass's loader processes [CPUs - 1; none from the cache on a CPU]", ge=0
    )
    stages: str | None = option(
        None, "comma-separated subset of the stages [all; on a GPU all but the CPU engines]"
    )
    engine: Engine = option(
        "auto", "engine of the ours_predict stages: auto | torch | onnx | openvino"
    )
    out: str | None = option(None, "folder for bench.json and bench.md [runs/bench/MODEL-SIZE]")

    @field_validator("cache")
    @classmethod
    def _ram_or_disk(cls, value: str) -> str:
        if value not in ("ram", "disk"):
            raise ValueError(f"'{value}' is not ram or disk")
        return value


class ModelsConfig(ConfigModel):
    """``histoclass models``: the pathology foundation models ``--model`` takes by short name."""

    open_only: bool = option(False, "only the models anyone can download (not gated)")
    out: str | None = option(None, "also write the registry as CSV to this file")


class EmbedConfig(LabelledData):
    """``histoclass embed``: a backbone's features for every image, for users who model them themselves."""

    model: str = option(
        ...,
        "foundation model (histoclass models), timm name, hf-hub:ORG/NAME or run directory",
        argument=True,
    )
    data: str = option(
        ...,
        "images: class folders, a plain folder, labels CSV, .npz or medmnist:NAME",
        argument=True,
    )
    out: str = option("embeddings.npz", "embeddings.npz | .npy (+ .csv of ids) | .parquet")
    weights: str | None = option(
        None, "local weights file or downloaded model folder (offline machines)"
    )
    image_size: int | None = option(
        None, "input size [the model's own: 224, or the run's]", ge=16, le=4096
    )
    views: Literal["identity", "mean", "all"] = option(
        "identity", "identity | mean (of the 8 flips/rotations) | all (8 vectors per image)"
    )
    batch_size: int = option(64, "images per batch", ge=1)

    @field_validator("out")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if not value.endswith((".npz", ".npy", ".parquet")):
            raise ValueError(f"'{value}' must end in .npz, .npy or .parquet")
        return value
