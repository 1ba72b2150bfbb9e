"""Load weights into a DeepMIM model from our checkpoints or a bare encoder state dict.

Every key is accounted for: a key the model does not have, a weight the file lacks or a
shape that differs is reported by name, never silently dropped.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..config.loader import from_dict
from ..config.schema import ModelConfig
from .convert import convert_state_dict


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def read_state_file(path: str | Path) -> dict:
    """Read a .pt/.pth (weights_only) or .safetensors file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointError(f"cannot read checkpoint '{path}': {err}") from err


def extract_state_dict(obj: dict) -> Dict[str, torch.Tensor]:
    """The weights inside a checkpoint dict (under 'model', 'state_dict' or at the top)."""
    for key in ("model", "state_dict", "model_state", "module"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def compare_state_dicts(own: Dict[str, torch.Tensor], incoming: Dict[str, torch.Tensor]
                        ) -> Tuple[List[str], List[str], List[str]]:
    missing = sorted(k for k in own if k not in incoming)
    unexpected = sorted(k for k in incoming if k not in own)
    mismatched = sorted(f"{k}: file {tuple(incoming[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in incoming if k in own and incoming[k].shape != own[k].shape)
    return missing, unexpected, mismatched


def load_weights(model: torch.nn.Module, path_or_state, strict: bool = True) -> List[str]:
    """Load a checkpoint of any supported layout (see models/convert.py) into `model`.

    Raises CheckpointError naming every unknown key, missing key and shape mismatch. A file with
    encoder weights only (MAE's encoder release, timm ViT weights) loads the encoder and leaves the
    decoders at their initialisation; the returned notes say so."""
    obj = read_state_file(path_or_state) if isinstance(path_or_state, (str, Path)) else path_or_state
    blocks = sorted(int(b) for b in getattr(model, "decoders", {}))
    try:
        state, notes = convert_state_dict(extract_state_dict(obj), blocks)
    except KeyError as err:
        raise CheckpointError(str(err.args[0])) from err
    own = model.state_dict()
    missing, unexpected, mismatched = compare_state_dicts(own, state)
    if missing and not any(k.startswith("decoders.") for k in state):
        decoder_keys = [k for k in missing if k.startswith("decoders.")]
        if decoder_keys:
            notes.append(f"the file holds no decoder weights: {len(decoder_keys)} decoder tensors keep their "
                         f"initialisation")
            missing = [k for k in missing if not k.startswith("decoders.")]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched))
    if strict and unexpected:
        problems.append("keys in the file that the model lacks: " + ", ".join(unexpected))
    if strict and missing:
        problems.append("keys the model needs that the file lacks: " + ", ".join(missing))
    if problems:
        raise CheckpointError("checkpoint does not fit the model:\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=False)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return notes


def config_from_checkpoint(obj: dict) -> Optional[ModelConfig]:
    cfg = obj.get("config") if isinstance(obj, dict) else None
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return from_dict(ModelConfig, cfg["model"], "model.")
    return None


def load_checkpoint(path: str | Path, model: Optional[torch.nn.Module] = None) -> torch.nn.Module:
    """Load a deepmim checkpoint. Without `model`, rebuild the model from the config saved in it."""
    obj = read_state_file(path)
    if model is None:
        cfg = config_from_checkpoint(obj)
        if cfg is None:
            raise CheckpointError(f"'{path}' holds no deepmim config; build the model first and pass it: "
                                  f"load_checkpoint(path, create_model('preset_name'))")
        from .deepmim import DeepMIM
        model = DeepMIM(cfg)
    load_weights(model, obj)
    return model


def load_encoder(path: str | Path, cfg: Optional[ModelConfig] = None):
    """Only the encoder of a checkpoint (any supported layout), without building decoders or
    targets, so a model trained with a teacher exports and probes without the teacher's file.
    `cfg` is needed for files that carry no deepmim config (MAE, the authors', timm)."""
    from .encoder import MaskedViTEncoder

    obj = read_state_file(path)
    cfg = cfg or config_from_checkpoint(obj)
    if cfg is None:
        raise CheckpointError(f"'{path}' holds no deepmim config; name the architecture, e.g. with a preset")
    blocks = sorted(h.block for h in cfg.heads)
    try:
        state, _ = convert_state_dict(extract_state_dict(obj), blocks)
    except KeyError as err:
        raise CheckpointError(str(err.args[0])) from err
    encoder = MaskedViTEncoder(cfg.encoder)
    enc_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    missing, unexpected, mismatched = compare_state_dicts(encoder.state_dict(), enc_state)
    problems = [f"shape mismatch: {'; '.join(mismatched)}"] if mismatched else []
    problems += [f"keys the encoder lacks: {', '.join(unexpected)}"] if unexpected else []
    problems += [f"encoder keys missing from the file: {', '.join(missing)}"] if missing else []
    if problems:
        raise CheckpointError(f"'{path}' does not fit the encoder:\n  " + "\n  ".join(problems))
    encoder.load_state_dict(enc_state)
    return encoder
