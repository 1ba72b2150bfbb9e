"""The encoder of a deepmim or MAE checkpoint (or a bare/exported encoder) as a timm ViT.

MaskedViTEncoder's state dict is timm's VisionTransformer layout, so the encoder loads into
timm as is and its forward_features are MaskedViTEncoder.forward_features.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional, Tuple

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ...checkpoint import CheckpointError, load_strict, read_checkpoint, read_metadata
from ...config.schema import IMAGENET_MEAN, IMAGENET_STD, EncoderConfig
from .net import MISFIT, TeacherNet

NOT_ENCODER = ("decoder", "mask_token", "head.", "fc_norm.")  # MAE's decoder, a classifier


def encoder_weights(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    if any(k.startswith("encoder.") for k in state):  # a deepmim model
        return {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    return {k: v for k, v in state.items() if not k.startswith(NOT_ENCODER)}


def infer_encoder_config(state: Dict[str, torch.Tensor], num_heads: Optional[int]) -> EncoderConfig:
    """MAE files and bare encoders carry no config: read the sizes from the shapes."""
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise CheckpointError("no ViT encoder found (no patch_embed.proj.weight / pos_embed)")
    dim, chans, patch, _ = state["patch_embed.proj.weight"].shape
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    return EncoderConfig(
        img_size=grid * patch,
        patch_size=patch,
        in_chans=chans,
        embed_dim=dim,
        depth=depth,
        num_heads=num_heads or max(dim // 64, 1),
        mlp_ratio=hidden / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )


def exported_num_heads(path: str) -> Optional[int]:
    """`deepmim export` writes num_heads into the safetensors metadata."""
    value = read_metadata(path).get("num_heads")
    return int(value) if value else None


def load_deepmim_encoder(path: str, num_heads: Optional[int] = None) -> Tuple[TeacherNet, List[float], List[float]]:
    ckpt = read_checkpoint(path)
    state = encoder_weights(ckpt.model_state)
    model_cfg = ckpt.model_config()
    enc = (
        model_cfg.encoder
        if model_cfg is not None
        else infer_encoder_config(state, num_heads or exported_num_heads(path))
    )
    vit = VisionTransformer(
        img_size=enc.img_size,
        patch_size=enc.patch_size,
        in_chans=enc.in_chans,
        num_classes=0,
        embed_dim=enc.embed_dim,
        depth=enc.depth,
        num_heads=enc.num_heads,
        mlp_ratio=enc.mlp_ratio,
        qkv_bias=enc.qkv_bias,
        norm_layer=partial(nn.LayerNorm, eps=enc.norm_eps),
    )
    load_strict(vit, state, context=MISFIT)
    data = ckpt.config.get("data") if isinstance(ckpt.config.get("data"), dict) else {}
    mean, std = list(data.get("mean") or IMAGENET_MEAN), list(data.get("std") or IMAGENET_STD)
    return TeacherNet(vit), mean, std
