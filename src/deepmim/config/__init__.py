"""Typed configs and the YAML/override loader."""
from .loader import ConfigError, dump_yaml, from_dict, load_config, parse_overrides, to_dict
from .schema import DataConfig, EncoderConfig, HeadConfig, ModelConfig, OptimConfig, PretrainConfig, TrainConfig

__all__ = ["ConfigError", "dump_yaml", "from_dict", "load_config", "parse_overrides", "to_dict", "DataConfig",
           "EncoderConfig", "HeadConfig", "ModelConfig", "OptimConfig", "PretrainConfig", "TrainConfig"]
