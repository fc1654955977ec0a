"""Configuration as data: pydantic models, loaded from YAML and overridden by flags and ``--set``.

A run directory's ``config.yaml`` is the fully resolved :class:`Config`: loading it again reproduces the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from histoclass.errors import HistoclassError

__all__ = [
    "AUGMENT_PRESETS",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "save_config",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """Where the images are and how they are read, split and batched."""

    path: str | None = Field(None, description="class-folder dataset, labels CSV, .npz, or medmnist:NAME")
    image_dir: str | None = Field(None, description="image folder for a CSV (default: the CSV's folder)")
    id_column: str = Field("id", description="CSV column holding the image id")
    label_column: str = Field("label", description="CSV column holding the class label")
    group_column: str | None = Field(None, description="CSV column naming each image's group (patient)")
    group_by: str | None = Field(None, description="regex whose first capture group names the group")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="validation share when no split exists")
    image_size: int = Field(224, ge=16, le=4096, description="square input size in pixels")
    batch_size: int = Field(32, ge=1, description="images per batch and device")
    workers: int | None = Field(None, ge=0, description="data loader processes (default: from the CPUs)")
    cache: Literal["none", "ram", "disk"] = Field(
        "none", description="decode and resize once: ram (this run) or disk ($HISTOCLASS_CACHE, reused)"
    )


#: Augmentation presets: the seed notebooks' sets. Explicit fields override a preset's values.
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "keras": {"rotation": 20.0, "shift": 0.1, "shear": 11.5, "zoom": 0.2, "hflip": True},
    "tfdata": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "crop_scale": 0.8, "hflip": True},
    "histology": {
        "hflip": True,
        "vflip": True,
        "rot90": True,
        "brightness": 0.1,
        "contrast": 0.1,
        "saturation": 0.1,
        "hue": 0.02,
    },
}


class AugmentConfig(_Section):
    """Training-time augmentation; validation and test data are only resized and normalised."""

    preset: Literal["none", "keras", "tfdata", "histology"] = "histology"
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
    crop_scale: float | None = Field(None, gt=0, le=1, description="random crop of this min area, resized")
    mixup: float = Field(0.0, ge=0, description="MixUp alpha (0: off)")
    cutmix: float = Field(0.0, ge=0, description="CutMix alpha (0: off)")
    mix_prob: float = Field(0.5, ge=0, le=1, description="share of batches mixed when MixUp/CutMix is on")
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, values: Any) -> Any:
        """Values the user did not give come from the preset; the resolved config then holds them all."""
        if not isinstance(values, dict):
            return values
        preset = values.get("preset", "histology")
        return {**AUGMENT_PRESETS.get(preset, {}), **values}


class ModelConfig(_Section):
    """Backbone, head and starting weights."""

    name: str = Field("mobilenetv2_100", description="timm model name, or alexnet")
    pretrained: bool = Field(True, description="start from ImageNet weights")
    weights: str | None = Field(None, description="local checkpoint (.safetensors or .pth) instead of a download")
    head: str = Field("linear", description="linear | gap-dense | gap-bn-dense")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the head's last layer")


class TrainConfig(_Section):
    """The two-phase schedule, optimiser and devices."""

    epochs: int = Field(30, ge=1)
    phase1_epochs: int | None = Field(None, ge=0, description="frozen-backbone epochs (default: epochs/5)")
    unfreeze_last: int | Literal["all"] = Field(3, description="backbone blocks trained in phase 2")
    lr: float = Field(1e-3, gt=0)
    finetune_lr_scale: float = Field(0.1, gt=0, le=1, description="backbone learning rate / lr")
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    scheduler: Literal["plateau", "cosine", "none"] = "plateau"
    early_stopping_patience: int = Field(3, ge=1)
    lr_patience: int = Field(2, ge=1)
    lr_factor: float = Field(0.5, gt=0, lt=1)
    min_lr: float = Field(1e-5, ge=0)
    class_weights: Literal["none", "balanced"] = "none"
    seed: int = 42
    accelerator: str = Field("auto", description="auto | cpu | gpu")
    devices: str = Field("auto", description="auto, a count, or a list such as 0,1")
    precision: str | None = Field(None, description="default: bf16-mixed on a GPU, 32 on CPU")
    strategy: str | None = Field(None, description="Lightning strategy (default: DDP when several processes)")
    num_nodes: int = Field(1, ge=1, description="machines (torchrun --nnodes or SLURM nodes)")
    sync_batchnorm: bool = Field(False, description="BatchNorm statistics over all processes")
    scale_lr: bool = Field(False, description="multiply lr by the number of processes")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="also checkpoint every K steps mid-epoch")
    compile: bool = Field(False, description="torch.compile the model (slower start, faster steps)")

    @model_validator(mode="after")
    def _resolve_phase1(self) -> TrainConfig:
        if self.phase1_epochs is None:
            self.phase1_epochs = max(1, self.epochs // 5)
        if isinstance(self.unfreeze_last, int) and self.unfreeze_last < 0:
            raise ValueError("unfreeze_last must be 'all' or a count >= 0")
        return self


class RunConfig(_Section):
    """Where the run directory goes."""

    name: str | None = Field(None, description="run name (default: dataset-model)")
    runs_dir: str = Field("runs", description="parent folder of run directories")


class Config(_Section):
    """Everything a training run needs; saved resolved as ``runs/NAME/config.yaml``."""

    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    run: RunConfig = RunConfig()


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{where}: {item['msg']}{shown}")
    return "bad config value: " + "; ".join(parts)


def build_config(values: dict[str, Any]) -> Config:
    """Validate a nested dict into a :class:`Config`, or fail with one line naming the bad keys."""
    try:
        return Config.model_validate(values)
    except ValidationError as error:
        raise HistoclassError(_describe(error)) from None


def load_config(path: str | Path | None) -> dict[str, Any]:
    """Read a YAML config into a nested dict (empty when ``path`` is None)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise HistoclassError(f"--config: no such file '{path}'; pass a YAML file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise HistoclassError(f"--config: '{path}' is not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise HistoclassError(f"--config: '{path}' must hold a mapping of sections (data:, model:, train:)")
    return values


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Return ``values`` with ``section.key`` overrides applied.

    ``overrides`` is either a mapping of dotted keys to values (flags) or ``key=value`` strings (``--set``),
    whose values are parsed as YAML scalars so ``train.lr=1e-4`` becomes a float.
    """
    if isinstance(overrides, list):
        parsed = {}
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or "." not in key:
                raise HistoclassError(f"--set: '{item}' is not section.key=value (e.g. train.lr=0.0005)")
            parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        overrides = parsed
    result = {section: dict(body) for section, body in values.items()}
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        result.setdefault(section, {})[field] = value
    return result


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from histoclass.atomic import write_text

    write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
