"""create_model: a preset name, a ModelConfig or a plain dict -> a DeepMIM model."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Union

from ..config.loader import deep_merge, from_dict
from ..config.schema import ModelConfig
from .deepmim import DeepMIM
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


def create_model(spec: Union[str, ModelConfig, Dict[str, Any]], checkpoint_path: str | None = None) -> DeepMIM:
    """Build a DeepMIM (or MAE) model from a preset name, a ModelConfig or a mapping.

    >>> model = create_model("deepmim_pixel_vit_base")
    >>> out = model(images)            # out.loss, out.losses[block], out.mask
    """
    model = DeepMIM(resolve_model_config(spec))
    if checkpoint_path:
        load_weights(model, checkpoint_path)
    return model
