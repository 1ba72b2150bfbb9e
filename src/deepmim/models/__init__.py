"""Models: the masked ViT encoder, the decoder, the DeepMIM wrapper, the target interface it consumes
(target.py), head naming, presets, checkpoint layouts and loading, export, the UperNet segmentor.

The names below are imported on first use (PEP 562), so reading the presets (presets.py, config only)
does not load torch."""

import importlib

_WHERE = {
    "MaskedDecoder": "decoder",
    "DeepMIM": "deepmim",
    "PretrainOutput": "deepmim",
    "validate_model_config": "deepmim",
    "MaskedViTEncoder": "encoder",
    "create_model": "factory",
    "expand_model_dict": "factory",
    "resolve_model_config": "factory",
    "CheckpointError": "loading",
    "load_checkpoint": "loading",
    "load_weights": "loading",
    "Masking": "masking",
    "random_masking": "masking",
    "list_presets": "presets",
    "preset_config": "presets",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
