"""Load weights into a DeepMIM model from our checkpoints or a bare encoder state dict.

Every key is accounted for: a key the model does not have, a weight the file lacks or a
shape that differs is reported by name, never silently dropped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..config.loader import from_dict
from ..config.schema import ModelConfig


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
    for key in ("model", "state_dict", "model_state"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def to_model_keys(state: Dict[str, torch.Tensor], model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Map a bare timm/MAE encoder state dict (patch_embed.*, blocks.*) onto `encoder.*`."""
    own = model.state_dict()
    if any(k in own for k in state):
        return state
    mapped = {f"encoder.{k}": v for k, v in state.items() if not k.startswith(("head.", "fc_norm."))}
    return mapped if any(k in own for k in mapped) else state


def compare_state_dicts(own: Dict[str, torch.Tensor], incoming: Dict[str, torch.Tensor]
                        ) -> Tuple[List[str], List[str], List[str]]:
    missing = sorted(k for k in own if k not in incoming)
    unexpected = sorted(k for k in incoming if k not in own)
    mismatched = sorted(f"{k}: file {tuple(incoming[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in incoming if k in own and incoming[k].shape != own[k].shape)
    return missing, unexpected, mismatched


def load_weights(model: torch.nn.Module, path_or_state, strict: bool = True,
                 allow_missing_prefixes: Tuple[str, ...] = ()) -> List[str]:
    """Load into `model`; raise CheckpointError naming every problem. Returns the missing keys
    that were allowed (e.g. decoders when loading an encoder-only file with allow_missing_prefixes=('decoders.',))."""
    obj = read_state_file(path_or_state) if isinstance(path_or_state, (str, Path)) else path_or_state
    state = to_model_keys(extract_state_dict(obj), model)
    missing, unexpected, mismatched = compare_state_dicts(model.state_dict(), state)
    allowed = [k for k in missing if k.startswith(allow_missing_prefixes)] if allow_missing_prefixes else []
    missing = [k for k in missing if k not in allowed]
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
    return allowed


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
