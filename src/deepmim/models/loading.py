"""Load weights into a DeepMIM model, or its encoder alone, from any supported checkpoint layout
(ours, the authors' DeepMIM release, MAE's, timm's, Hugging Face ViTMAE / ViT folders; models/convert.py).

Every key is accounted for (deepmim.checkpoint.load_strict): a key the model does not have, a
weight the file lacks or a shape that differs is reported by name, never silently dropped.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from ..checkpoint import CheckpointError, load_strict, read_checkpoint
from ..config.loader import ConfigError
from ..config.schema import EncoderConfig, ModelConfig
from .convert import convert_state_dict
from .deepmim import DeepMIM, validate_model_config
from .encoder import MaskedViTEncoder
from .export import encoder_state_dict
from .head_names import decoder_blocks
from .hf import is_hf_folder, model_config_from_hf, read_hf_config
from .presets import preset_config

__all__ = ["CheckpointError", "load_weights", "load_checkpoint", "load_encoder", "pretrained_encoder", "frozen"]


def _converted(state: Dict[str, torch.Tensor], blocks: List[int]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    try:
        return convert_state_dict(state, blocks)
    except KeyError as err:
        raise CheckpointError(str(err.args[0])) from err


def load_weights(model: torch.nn.Module, path_or_state, strict: bool = True) -> List[str]:
    """Load a checkpoint of any supported layout (see models/convert.py) into `model`.

    Raises CheckpointError naming every unknown key, missing key and shape mismatch. A file with
    encoder weights only (MAE's encoder release, timm ViT weights) loads the encoder and leaves the
    decoders at their initialisation; the returned notes say so. strict=False: missing and unknown
    keys are let through (shapes must still fit)."""
    ckpt = read_checkpoint(path_or_state)
    blocks = decoder_blocks(getattr(model, "decoders", {}))
    state, notes = _converted(ckpt.model_state, blocks)
    allow_missing: Tuple[str, ...] = ()
    if not any(k.startswith("decoders.") for k in state):
        decoder_keys = [k for k in model.state_dict() if k.startswith("decoders.")]
        if decoder_keys:
            notes.append(
                f"the file holds no decoder weights: {len(decoder_keys)} decoder tensors keep their initialisation"
            )
            allow_missing = ("decoders.*",)
    load_strict(
        model,
        state,
        context=f"{ckpt.name} does not fit the model",
        allow_missing=allow_missing if strict else ("*",),
        allow_unexpected=() if strict else ("*",),
    )
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return notes


HF_SIZES = (
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "image_size",
    "patch_size",
    "num_channels",
    "intermediate_size",
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
)


def hf_model_config(path) -> ModelConfig:
    """The ModelConfig of a Hugging Face folder's config.json, its sizes checked before anything is built
    (a string, a negative or a huge size is refused with the file and the key named)."""
    where = f"'{Path(path) / 'config.json'}'"
    config = read_hf_config(path)
    for key in HF_SIZES:
        value = config.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if "decoder_num_hidden" in key else 1):
            raise CheckpointError(
                f"{where}: {key} must be a positive whole number, got {value!r}; fix the file "
                f"(or write it again with deepmim export --format hf)"
            )
    try:
        cfg = model_config_from_hf(config)
        validate_model_config(cfg)
    except (ConfigError, KeyError, TypeError, ValueError, ZeroDivisionError) as err:
        given = ", ".join(f"{k}={config[k]!r}" for k in HF_SIZES if k in config)
        raise CheckpointError(
            f"{where} does not describe a model deepmim can build ({given}: {err}); fix the "
            f"file (or write it again with deepmim export --format hf)"
        ) from None
    return cfg


def saved_model_config(path, ckpt) -> Optional[ModelConfig]:
    """The architecture a file records: a deepmim config, or a Hugging Face folder's config.json."""
    if isinstance(path, (str, Path)) and is_hf_folder(path):
        return hf_model_config(path)
    return ckpt.model_config()


def load_checkpoint(path: Union[str, Path], model: Optional[torch.nn.Module] = None) -> torch.nn.Module:
    """Load a deepmim checkpoint (or a Hugging Face ViTMAE folder). Without `model`, rebuild the model
    from the config saved in it (config.json for a folder)."""
    ckpt = read_checkpoint(path)
    if model is None:
        cfg = saved_model_config(path, ckpt)
        if cfg is None:
            raise CheckpointError(
                f"'{path}' holds no deepmim config; build the model first and pass it: "
                f"load_checkpoint(path, create_model('preset_name'))"
            )
        model = DeepMIM(cfg)
    load_weights(model, ckpt)
    return model


def load_encoder(path: Union[str, Path], model: Union[ModelConfig, str, None] = None) -> MaskedViTEncoder:
    """Only the encoder of a checkpoint (any supported layout), without building decoders or
    targets, so a model trained with a teacher exports and probes without the teacher's file.
    `model` (a ModelConfig or a preset name) names the architecture of files that carry no deepmim
    config (MAE, the authors', timm)."""
    ckpt = read_checkpoint(path)
    cfg = (preset_config(model) if isinstance(model, str) else model) or saved_model_config(path, ckpt)
    if cfg is None:
        raise CheckpointError(
            f"'{path}' holds no deepmim config; name the architecture with a preset (deepmim presets lists them)"
        )
    state, _ = _converted(ckpt.model_state, sorted(h.block for h in cfg.heads))
    encoder = MaskedViTEncoder(cfg.encoder)
    enc_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    load_strict(encoder, enc_state, context=f"'{path}' does not fit the encoder")
    return encoder


def pretrained_encoder(
    checkpoint: Optional[str], preset: Optional[str]
) -> Tuple[EncoderConfig, Optional[Dict[str, torch.Tensor]]]:
    """What a downstream model (classifier, segmentor) starts from: the architecture and weights of
    the encoder in `checkpoint` (`preset` naming the architecture of files without a deepmim config),
    or with no checkpoint the preset's architecture and no weights (random initialisation)."""
    cfg = preset_config(preset) if preset else None
    if checkpoint:
        encoder = load_encoder(checkpoint, cfg)
        return encoder.cfg, encoder_state_dict(encoder)
    if cfg is None:
        raise ConfigError("set model.checkpoint (pre-trained weights) or model.preset (random initialisation)")
    return cfg.encoder, None


def frozen(module: torch.nn.Module) -> torch.nn.Module:
    """`module` in eval mode with gradients off, in place: features for probes and analyses."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
