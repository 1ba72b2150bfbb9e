"""Export the encoder in timm's VisionTransformer layout (safetensors)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
from timm.layers import resample_abs_pos_embed

from ..checkpoint import save_weights

TIMM_NAMES = {  # (embed_dim, depth, patch_size) -> timm model name at 224
    (192, 12, 16): "vit_tiny_patch16_224",
    (384, 12, 16): "vit_small_patch16_224",
    (768, 12, 16): "vit_base_patch16_224",
    (1024, 24, 16): "vit_large_patch16_224",
}


def _encoder(model_or_encoder):
    return getattr(model_or_encoder, "encoder", model_or_encoder)


def encoder_state_dict(model, img_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """The encoder's weights under timm's names; pos_embed resampled to `img_size` if given.
    Takes a DeepMIM model or its encoder."""
    enc = _encoder(model)
    state = {k: v.detach().clone().contiguous() for k, v in enc.state_dict().items()}
    if img_size is not None and img_size != enc.cfg.img_size:
        grid = img_size // enc.cfg.patch_size
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [grid, grid], num_prefix_tokens=1).contiguous()
    return state


def timm_model_name(model) -> Optional[str]:
    c = _encoder(model).cfg
    return TIMM_NAMES.get((c.embed_dim, c.depth, c.patch_size))


def export_encoder(model, out_path: Path, img_size: Optional[int] = None) -> Path:
    """The encoder as safetensors in timm's layout, its architecture in the metadata (num_heads is
    not in the weights: deepmim's teacher target reads it from there)."""
    c = _encoder(model).cfg
    metadata = {"format": "pt", "img_size": str(img_size or c.img_size), "patch_size": str(c.patch_size),
                "in_chans": str(c.in_chans),
                "embed_dim": str(c.embed_dim), "depth": str(c.depth), "num_heads": str(c.num_heads),
                "timm_model": timm_model_name(model) or ""}
    return save_weights(encoder_state_dict(model, img_size), out_path, metadata)
