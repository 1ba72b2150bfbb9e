"""create_model: a preset name, a ModelConfig or a plain dict -> a DeepMIM model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Union

from ..config.loader import ConfigError, deep_merge, from_dict
from ..config.schema import ModelConfig
from .deepmim import DeepMIM, override_model_config
from .loading import load_weights
from .presets import preset_config


def expand_model_dict(data: Dict[str, Any]) -> Dict[str, Any]:
    """Resolve `preset: name` in a model mapping: the preset's fields, then the keys given."""
    preset = data.get("preset")
    if not preset:
        return data
    base = dataclasses.asdict(preset_config(preset))
    target = data.get("target")
    if isinstance(target, dict) and target.get("name", base["target"]["name"]) != base["target"]["name"]:
        base["target"] = {}  # another kind of target: the preset's options do not apply
    return deep_merge(base, data)


def resolve_model_config(spec: Union[str, ModelConfig, Dict[str, Any]]) -> ModelConfig:
    if isinstance(spec, ModelConfig):
        return spec
    if isinstance(spec, str):
        return preset_config(spec)
    return from_dict(ModelConfig, expand_model_dict(dict(spec)), "model.")


def create_model(
    spec: Union[str, ModelConfig, Dict[str, Any]],
    pretrained: Union[str, Path, bool, None] = None,
    checkpoint_path: str | None = None,
    **overrides: Any,
) -> DeepMIM:
    """Build a DeepMIM (or MAE) model from a preset name, a ModelConfig or a mapping, as timm does:
    `pretrained` a checkpoint of any layout deepmim reads (a .pt / .safetensors file, a save_pretrained or
    Hugging Face folder; `checkpoint_path` is the same), keyword overrides on the config.

    >>> model = create_model("deepmim_pixel_vit_base")
    >>> model = create_model("mae_vit_base", pretrained="runs/mae/checkpoint-last.pt", mask_ratio=0.6)
    >>> out = model(images)            # out.loss, out.losses[block], out.mask
    """
    if pretrained is True:
        raise ConfigError(
            "create_model(..., pretrained=True): deepmim downloads no default weights; give the path "
            "of a checkpoint or folder (pretrained='runs/x/checkpoint-last.pt'), or load a Hub repo "
            "with DeepMIM.from_pretrained('user/name')"
        )
    model = DeepMIM(override_model_config(resolve_model_config(spec), **overrides))
    path = pretrained or checkpoint_path
    if path:
        load_weights(model, str(path))
    return model
