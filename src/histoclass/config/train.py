"""The train verb's config: sections ``data``, ``augment``, ``model``, ``train``, ``run``.

A run directory's ``config.yaml`` is the fully resolved :class:`Config`: loading it again reproduces the run.
Fields made with :func:`option` are also command-line flags; every field can be set with ``--set``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from histoclass.config.loading import ConfigModel, option, validate

__all__ = [
    "AUGMENT_PRESETS",
    "RECIPE_IMAGE_SIZE",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "Framing",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "build_config",
    "check_progressive_resize",
]


#: The input size left open: measured best for CNNs within the CPU budget (docs/benchmarks.md, the recipe
#: ablation). Models whose weights fix their input (transformers, foundation models) use their own.
RECIPE_IMAGE_SIZE = 128

#: What of each image a model sees (:mod:`histoclass.data.framing`).
Framing = Literal["field", "cell"]


class DataConfig(ConfigModel):
    """Where the images are and how they are read, split and batched."""

    path: str | None = option(
        None,
        "class-folder dataset, labels CSV (with --image-dir), MedMNIST-style .npz, or medmnist:NAME",
        flag="data",
    )
    image_dir: str | None = option(
        None, "image folder for a labels CSV (default: the CSV's folder)"
    )
    id_column: str = option("id", "CSV column holding the image id")
    label_column: str = option("label", "CSV column holding the class label")
    group_column: str | None = option(None, "CSV column naming each image's group (patient, slide)")
    group_by: str | None = option(
        None,
        "auto (near-duplicate clusters), or a regex over the image path whose first capture group "
        "names the group",
    )
    train_mpp: float | None = option(
        None,
        "microns per pixel of the training images, so `slide` tiles slides at the same resolution",
        gt=0,
    )
    val_fraction: float = option(0.2, "validation share when the data has no val split", gt=0, lt=1)
    image_size: int | None = option(
        None,
        f"square input size in pixels [{RECIPE_IMAGE_SIZE}; a transformer's own size]",
        ge=16,
        le=4096,
    )
    framing: Framing = option(
        "field",
        "what the model sees of each image, in training and every later use: field (all of it) | cell "
        "(a square around the most strongly stained cell, so other labs' wider or tighter framing matters "
        "less; for single-cell images)",
    )
    batch_size: int = option(32, "images per batch and device", ge=1)
    workers: int | None = option(
        None,
        "data loader processes (default: CPUs - 1; none for a decoded cache on the CPU, where "
        "reading it is a copy)",
        ge=0,
    )
    cache: Literal["auto", "none", "ram", "disk"] = option(
        "auto",
        "decode and resize every image once: auto (ram when it fits in a quarter of the free "
        "memory) | ram (this run) | disk ($HISTOCLASS_CACHE, reused) | none",
    )
    stain_normalize: Literal["macenko", "reinhard"] | None = option(
        None,
        "map every image's stain colours onto --stain-target's, in training and every later use: "
        "macenko | reinhard",
    )
    stain_target: str | None = option(
        None, "reference image for --stain-normalize (a typical, well-stained image)"
    )

    @model_validator(mode="after")
    def _stain_pair(self) -> DataConfig:
        if bool(self.stain_normalize) != bool(self.stain_target):
            raise ValueError(
                "--stain-normalize and --stain-target go together: give both or neither"
            )
        return self


#: Augmentation presets: the seed notebooks' sets. Explicit fields override a preset's values.
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "keras": {"rotation": 20.0, "shift": 0.1, "shear": 11.5, "zoom": 0.2, "hflip": True},
    "tfdata": {
        "brightness": 0.2,
        "contrast": 0.2,
        "saturation": 0.2,
        "crop_scale": 0.8,
        "hflip": True,
    },
    "histology": {
        "hflip": True,
        "vflip": True,
        "rot90": True,
        "brightness": 0.1,
        "contrast": 0.1,
        "saturation": 0.1,
        "hue": 0.02,
    },
    # Another lab's images: other stain and camera (strong colour, stain and grey), other magnification and
    # framing (objects 1/3 to 3x the size). Measured on a new lab's cells: docs/benchmarks.md, robustness.
    "robust": {
        "hflip": True,
        "vflip": True,
        "rot90": True,
        "magnify": (0.33, 3.0),
        "brightness": 0.3,
        "contrast": 0.3,
        "saturation": 0.5,
        "hue": 0.15,
        "stain": 0.15,
        "grayscale": 0.2,
    },
}


class AugmentConfig(ConfigModel):
    """Training-time augmentation; validation and test data are only resized and normalised."""

    preset: Literal["none", "keras", "tfdata", "histology", "robust"] = option(
        "histology",
        "augmentation preset: histology | robust (other labs) | keras | tfdata | none",
        flag="augment",
    )
    rotation: float = Field(0.0, ge=0, le=180, description="random rotation range, degrees (±)")
    shift: float = Field(0.0, ge=0, lt=1, description="random shift, fraction of the size (±)")
    shear: float = Field(0.0, ge=0, lt=90, description="random shear, degrees (±)")
    zoom: float = Field(0.0, ge=0, lt=1, description="random zoom range (1 ± zoom)")
    hflip: bool = False
    vflip: bool = False
    rot90: bool = Field(False, description="random multiples of 90° (tissue has no up)")
    brightness: float = Field(0.0, ge=0, le=1)
    contrast: float = Field(0.0, ge=0, le=1)
    saturation: float = Field(0.0, ge=0, le=1)
    hue: float = Field(0.0, ge=0, le=0.5)
    crop_scale: float | None = Field(
        None, gt=0, le=1, description="random crop of this min area, resized"
    )
    magnify: tuple[float, float] | None = Field(
        None,
        description="zoom drawn log-uniformly from (low, high): <1 zooms out (reflected border), >1 in",
    )
    magnify_offset: float = Field(
        0.1, ge=0, le=0.5, description="magnify: the centre moves by up to this share"
    )
    grayscale: float = Field(0.0, ge=0, le=1, description="probability of turning an image grey")
    stain: float = Field(
        0.0, ge=0, le=1, description="HED stain jitter: each stain scaled by 1±s and shifted by ±s"
    )
    erasing: float = Field(
        0.0, ge=0, le=1, description="probability of erasing a random rectangle (2-33% of the area)"
    )
    mixup: float = Field(0.0, ge=0, description="MixUp alpha (0: off)")
    cutmix: float = Field(0.0, ge=0, description="CutMix alpha (0: off)")
    mix_prob: float = Field(
        0.5, ge=0, le=1, description="share of batches mixed when MixUp/CutMix is on"
    )
    label_smoothing: float = Field(
        0.1, ge=0, lt=1, description="share of the target spread over the other classes"
    )

    @model_validator(mode="after")
    def _magnify_range(self) -> AugmentConfig:
        if self.magnify is not None and not 0 < self.magnify[0] <= self.magnify[1] <= 10:
            raise ValueError("magnify must be (low, high) with 0 < low <= high <= 10")
        return self

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, values: Any) -> Any:
        """Values the user did not give come from the preset; the resolved config then holds them all."""
        if not isinstance(values, dict):
            return values
        preset = values.get("preset", "histology")
        return {**AUGMENT_PRESETS.get(preset, {}), **values}


class ModelConfig(ConfigModel):
    """Backbone, head and starting weights."""

    name: str = option(
        "tf_efficientnet_lite0",
        "timm model name, a foundation model (histoclass models), hf-hub:ORG/NAME, or alexnet",
        flag="model",
    )
    pretrained: bool = option(True, "start from ImageNet weights")
    weights: str | None = option(
        None, "local checkpoint (.safetensors or .pth) instead of a download"
    )
    head: str = option("linear", "linear | gap-dense | gap-bn-dense | mlp | knn")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the head's last layer")
    drop_path: float = Field(
        0.0, ge=0, lt=1, description="stochastic depth rate (timm models that have it)"
    )


class TrainConfig(ConfigModel):
    """The two-phase schedule, optimiser and devices."""

    epochs: int = option(10, "total epochs, both phases", ge=1)
    phase1_epochs: int | None = option(
        None, "frozen-backbone epochs (default: epochs/10, at least 1)", ge=0
    )
    unfreeze_last: int | Literal["all"] = option(
        "all", "backbone blocks fine-tuned in phase 2, or all"
    )
    lr: float = option(2e-3, "head learning rate", gt=0)
    finetune_lr_scale: float = option(
        0.5, "backbone learning rate / head learning rate", gt=0, le=1
    )
    optimizer: Literal["adamw", "adam", "sgd"] = option("adamw", "adamw | adam | sgd")
    weight_decay: float = Field(1e-4, ge=0)
    scheduler: Literal["plateau", "cosine", "none"] = option(
        "cosine", "plateau | cosine (per step) | none"
    )
    warmup_epochs: float = Field(
        1.0, ge=0, description="linear learning-rate warm-up (cosine schedule)"
    )
    layer_decay: float | None = Field(
        0.8,
        gt=0,
        le=1,
        description="layer-wise lr decay: each backbone block's lr is this times the next one's",
    )
    ema: float = Field(0.998, ge=0, lt=1, description="EMA decay of the weights (0: off)")
    early_stopping_patience: int = Field(3, ge=1)
    lr_patience: int = Field(2, ge=1)
    lr_factor: float = Field(0.5, gt=0, lt=1)
    min_lr: float = Field(1e-5, ge=0)
    class_weights: Literal["none", "balanced"] = option(
        "none", "none | balanced (for imbalanced classes)"
    )
    seed: int = option(42, "seed for splits, initialisation and augmentation")
    accelerator: str = option("auto", "auto | cpu | gpu")
    devices: str = option("auto", "auto, a count, or device ids such as 0,1")
    precision: str | None = Field(
        None,
        description="Lightning precision; default (auto): bf16-mixed on a GPU, 32-true on CPU "
        "(measured faster)",
    )
    strategy: str | None = Field(
        None, description="Lightning strategy (default: DDP when several processes)"
    )
    num_nodes: int = option(1, "machines, for torchrun --nnodes or SLURM", ge=1)
    sync_batchnorm: bool = option(False, "BatchNorm statistics over all processes")
    scale_lr: bool = Field(False, description="multiply lr by the number of processes")
    checkpoint_every_steps: int | None = option(
        None, "also checkpoint every K training steps, mid-epoch", ge=1
    )
    compile: bool = option(
        False, "torch.compile the model: a slower first epoch, faster steps after"
    )
    coverage: float = option(
        0.9, "prediction sets hold the true class this often (calibrated on validation)", gt=0, lt=1
    )
    mondrian: bool = Field(
        False, description="prediction-set thresholds per class (coverage holds per class)"
    )
    probe: Literal["linear", "mlp", "knn"] | None = option(
        None, "train only a head on the frozen backbone's cached embeddings: linear | mlp | knn"
    )
    probe_views: bool = option(
        False, "probe: the 8 flips and rotations of each training image as extra samples"
    )
    # Embeddings are small and a step of the head costs less than Lightning's work around it: 2,490
    # steps of 32 took 15 s on 10k cells (docs/benchmarks.md, issue 34)
    probe_batch: int = option(
        256,
        "probe: embeddings per optimizer step (--batch-size is the images per embedding pass)",
        ge=1,
    )
    progressive_resize: int | None = option(
        None,
        "progressive resizing: the first third of the epochs at this side (px), the next at halfway, "
        "the last at --image-size [off]",
        ge=16,
    )
    folds: int = option(
        1,
        "train K group-aware cross-validation folds and save their ensemble (mean of probabilities)",
        ge=1,
        le=20,
    )

    @model_validator(mode="after")
    def _resolve_phase1(self) -> TrainConfig:
        # the backbone never trains: no frozen phase to wait for, no block to unfreeze
        if self.probe:
            self.phase1_epochs, self.unfreeze_last = 0, 0
            # nothing to fit beyond storing the embeddings: one validating epoch
            if self.probe == "knn":
                self.epochs = 1
        if self.phase1_epochs is None:
            self.phase1_epochs = max(1, self.epochs // 10)
        if isinstance(self.unfreeze_last, int) and self.unfreeze_last < 0:
            raise ValueError("unfreeze_last must be 'all' or a count >= 0")
        if self.folds > 1 and (self.devices not in ("auto", "1") or self.num_nodes > 1):
            raise ValueError(
                "--folds trains one fold after another in one process; drop --devices/--num-nodes"
            )
        return self


class RunConfig(ConfigModel):
    """Where the run directory goes, or which interrupted run to continue."""

    name: str | None = option(
        None, "run name (default: dataset-model); an existing run is never overwritten"
    )
    runs_dir: str = option("runs", "parent folder of run directories")
    resume: str | None = option(
        None, "continue an interrupted run (runs/NAME) from its newest checkpoint"
    )
    logger: Literal["tensorboard", "csv", "mlflow", "wandb"] = option(
        "tensorboard",
        "training logs: tensorboard | csv | mlflow | wandb (MLFLOW_TRACKING_URI etc. as usual)",
    )


class Config(ConfigModel):
    """Everything a training run needs; saved resolved as ``runs/NAME/config.yaml``."""

    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _probe_head(self) -> Config:
        """A probe's head is the probe; it needs pretrained features (random ones would be cached as
        truth)."""
        if self.train.probe:
            if not (self.model.pretrained or self.model.weights):
                raise ValueError(
                    "--probe needs a pretrained backbone: drop --no-pretrained or pass --weights"
                )
            self.model.head = self.train.probe
            if self.data.stain_normalize:
                raise ValueError(
                    "--probe caches embeddings of the images as stored: drop --stain-normalize"
                )
        return self

    @model_validator(mode="after")
    def _progressive_below_the_size(self) -> Config:
        """Progressive resizing starts below the training size, on a backbone that trains."""
        if self.train.progressive_resize is not None and self.train.probe:
            raise ValueError("--probe trains on embeddings: drop --progressive-resize")
        if self.data.image_size is not None:
            check_progressive_resize(self.train.progressive_resize, self.data.image_size)
        return self


def check_progressive_resize(start: int | None, size: int) -> None:
    """Progressive resizing's first side must be below the training size (a ValueError says so)."""
    if start is not None and start >= size:
        raise ValueError(
            f"--progressive-resize {start} must be below the image size {size} (half of it, say)"
        )


def build_config(values: dict[str, Any]) -> Config:
    """Validate a nested dict into a :class:`Config`, or fail with one line naming the bad keys."""
    return validate(Config, values)
