"""Configuration as data: one validated pydantic model per verb, loaded from YAML, flags and ``--set``."""

from histoclass.config.loading import ConfigModel, apply_overrides, load_yaml, option, parse_set, validate
from histoclass.config.train import (
    AUGMENT_PRESETS,
    AugmentConfig,
    Config,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    build_config,
)
from histoclass.config.verbs import (
    AuditOptions,
    BenchConfig,
    CalibrateConfig,
    CheckDataConfig,
    CompareConfig,
    EvaluateConfig,
    ExportConfig,
    InferenceOptions,
    LabelledData,
    PredictConfig,
    ServeConfig,
)

__all__ = [
    "AUGMENT_PRESETS",
    "AuditOptions",
    "AugmentConfig",
    "BenchConfig",
    "CalibrateConfig",
    "CheckDataConfig",
    "CompareConfig",
    "Config",
    "ConfigModel",
    "DataConfig",
    "EvaluateConfig",
    "ExportConfig",
    "InferenceOptions",
    "LabelledData",
    "ModelConfig",
    "PredictConfig",
    "RunConfig",
    "ServeConfig",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "load_yaml",
    "option",
    "parse_set",
    "validate",
]
