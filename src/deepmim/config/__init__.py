"""Typed configs (schema.py: every task's dataclasses) and the YAML/override loader."""

from .loader import ConfigError, dump_yaml, from_dict, load_config, parse_overrides, to_dict
from .schema import (
    AnalyzeConfig,
    DataConfig,
    EncoderConfig,
    FinetuneConfig,
    HeadConfig,
    LinprobeConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    ProbeConfig,
    SegDataConfig,
    SegmentConfig,
    TrainConfig,
)

__all__ = [
    "ConfigError",
    "dump_yaml",
    "from_dict",
    "load_config",
    "parse_overrides",
    "to_dict",
    "AnalyzeConfig",
    "DataConfig",
    "EncoderConfig",
    "FinetuneConfig",
    "HeadConfig",
    "LinprobeConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "ProbeConfig",
    "SegDataConfig",
    "SegmentConfig",
    "TrainConfig",
]
