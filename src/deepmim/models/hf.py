"""Hugging Face `transformers` layouts of ViTMAE (`ViTMAEForPreTraining`) and ViT (`ViTModel`), both ways.

Key maps only (no `transformers` import): a folder with config.json and model.safetensors (or
pytorch_model.bin) is read into deepmim keys, and a DeepMIM model is written under the names of the
released ViTMAE checkpoints (transformers 4's `vit.encoder.layer.N.attention.attention.query`, ...;
transformers 5 renames them on load, and its own `vit.layers.N.attention.q_proj` layout is read too).

timm's fused `qkv` projection is split into query, key and value and back. The models compute the same
thing: MAE's sin-cos position embeddings (fixed, a zero row for the cls token), per-sample argsort masking
of `noise` keeping int(L * (1 - mask_ratio)) patches, one decoder on the final-normed last block, MSE on
the masked patches of (norm_pix: per-patch normalised, eps 1e-6) pixels, one LayerNorm eps throughout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..config.loader import ConfigError
from ..config.schema import EncoderConfig, HeadConfig, ModelConfig
from .head_names import decoder_key

CONFIG_FILE = "config.json"

# timm Block part -> transformers 4 ViTLayer part (q/k/v handled apart)
_LAYER_PARTS = {
    "attn.proj": "attention.output.dense",
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
# transformers 5 ViTLayer part -> transformers 4 part
_V5_PARTS = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_QKV = ("query", "key", "value")


# ----------------------------------------------------------------------------- configs


def check_mae_layout(cfg: ModelConfig) -> HeadConfig:
    """The head a ViTMAEForPreTraining takes: on the last block, after the final norm, pixel target."""
    enc = cfg.encoder
    last = max(cfg.heads, key=lambda h: h.block)
    target = last.target if last.target is not None else cfg.target
    if last.block != enc.depth or last.final_norm is False:
        raise ConfigError(
            "ViTMAE decodes the final-normed last block; this model's deepest head is at block "
            f"{last.block} of {enc.depth}" + (" without the final norm" if last.final_norm is False else "")
        )
    if target.get("name") != "pixel" or float(target.get("eps", 1e-6)) != 1e-6:
        raise ConfigError(
            f"ViTMAE reconstructs pixels (norm_pix eps 1e-6); this model's last head predicts "
            f"{target}: export the encoder alone (--format hf-encoder)"
        )
    return last


def transformer_sizes(enc: EncoderConfig, image_size: int) -> Dict[str, Any]:
    """The keys every transformers ViT-family config (ViT, ViTMAE, BEiT) spells the same way: sizes, GELU, no
    dropout, the LayerNorm eps, the input."""
    return {
        "hidden_size": enc.embed_dim,
        "num_hidden_layers": enc.depth,
        "num_attention_heads": enc.num_heads,
        "intermediate_size": int(enc.embed_dim * enc.mlp_ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": enc.norm_eps,
        "image_size": image_size,
        "patch_size": enc.patch_size,
        "num_channels": enc.in_chans,
    }


def vit_config(enc: EncoderConfig) -> Dict[str, Any]:
    """config.json of a transformers ViTModel with this encoder's architecture."""
    return {
        "model_type": "vit",
        "architectures": ["ViTModel"],
        **transformer_sizes(enc, enc.img_size),
        "initializer_range": 0.02,
        "qkv_bias": enc.qkv_bias,
        "encoder_stride": enc.patch_size,
    }


def vitmae_config(cfg: ModelConfig) -> Dict[str, Any]:
    """config.json of a transformers ViTMAEForPreTraining equal to this MAE-layout model."""
    head = check_mae_layout(cfg)
    target = head.target if head.target is not None else cfg.target
    out = {
        **vit_config(cfg.encoder),
        "model_type": "vit_mae",
        "architectures": ["ViTMAEForPreTraining"],
        "decoder_num_attention_heads": head.decoder_heads,
        "decoder_hidden_size": head.decoder_dim,
        "decoder_num_hidden_layers": head.decoder_depth,
        "decoder_intermediate_size": 4 * head.decoder_dim,
        "mask_ratio": cfg.mask_ratio,
        "norm_pix_loss": bool(target.get("norm_pix", True)),
    }
    del out["encoder_stride"]
    return out


def model_config_from_hf(config: Dict[str, Any]) -> ModelConfig:
    """The deepmim ModelConfig of a ViTMAE (or, encoder only, ViT) config.json."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"hidden_act {config['hidden_act']!r}: deepmim's blocks use GELU")
    dim, heads = config["hidden_size"], config["num_attention_heads"]
    enc = EncoderConfig(
        img_size=config.get("image_size", 224),
        patch_size=config.get("patch_size", 16),
        in_chans=config.get("num_channels", 3),
        embed_dim=dim,
        depth=config["num_hidden_layers"],
        num_heads=heads,
        mlp_ratio=config.get("intermediate_size", 4 * dim) / dim,
        qkv_bias=config.get("qkv_bias", True),
        norm_eps=config.get("layer_norm_eps", 1e-12),
    )
    decoder_dim = config.get("decoder_hidden_size", 512)
    if config.get("decoder_intermediate_size", 4 * decoder_dim) != 4 * decoder_dim:
        raise ConfigError("decoder_intermediate_size must be 4 x decoder_hidden_size (deepmim's decoder MLP ratio)")
    head = HeadConfig(
        block=enc.depth,
        decoder_dim=decoder_dim,
        decoder_depth=config.get("decoder_num_hidden_layers", 8),
        decoder_heads=config.get("decoder_num_attention_heads", 16),
    )
    return ModelConfig(
        encoder=enc,
        heads=[head],
        mask_ratio=config.get("mask_ratio", 0.75),
        target={"name": "pixel", "norm_pix": bool(config.get("norm_pix_loss", False))},
    )


# ----------------------------------------------------------------------------- folders


def is_hf_folder(path) -> bool:
    """A transformers model folder: config.json with a `model_type` (a timm folder's has an `architecture`)."""
    p = Path(path)
    if not (p.is_dir() and (p / CONFIG_FILE).is_file()):
        return False
    try:
        return "model_type" in json.loads((p / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False


def read_hf_config(path) -> Dict[str, Any]:
    return json.loads((Path(path) / CONFIG_FILE).read_text())


# ----------------------------------------------------------------------------- deepmim -> transformers


def _layer_to_hf(state: Dict[str, torch.Tensor], ours: str, theirs: str, depth: int) -> Dict[str, torch.Tensor]:
    out = {}
    for i in range(depth):
        src, dst = f"{ours}{i}.", f"{theirs}{i}."
        for kind in ("weight", "bias"):
            qkv = state.get(f"{src}attn.qkv.{kind}")
            if qkv is not None:
                for name, part in zip(_QKV, qkv.chunk(3, dim=0)):
                    out[f"{dst}attention.attention.{name}.{kind}"] = part.contiguous()
            for a, b in _LAYER_PARTS.items():
                out[f"{dst}{b}.{kind}"] = state[f"{src}{a}.{kind}"]
    return out


def encoder_to_hf(encoder_state: Dict[str, torch.Tensor], depth: int, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Encoder weights (timm names) -> ViTModel's (prefix 'vit.' inside ViTMAEForPreTraining)."""
    s = encoder_state
    out = {
        f"{prefix}embeddings.cls_token": s["cls_token"],
        f"{prefix}embeddings.position_embeddings": s["pos_embed"],
        f"{prefix}embeddings.patch_embeddings.projection.weight": s["patch_embed.proj.weight"],
        f"{prefix}embeddings.patch_embeddings.projection.bias": s["patch_embed.proj.bias"],
        f"{prefix}layernorm.weight": s["norm.weight"],
        f"{prefix}layernorm.bias": s["norm.bias"],
    }
    out.update(_layer_to_hf(s, "blocks.", f"{prefix}encoder.layer.", depth))
    return out


def vitmae_state(model) -> Dict[str, torch.Tensor]:
    """A DeepMIM (MAE-layout) model's weights under ViTMAEForPreTraining's names."""
    head = check_mae_layout(model.cfg)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    enc = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    out = encoder_to_hf(enc, model.encoder.depth, prefix="vit.")
    d = f"decoders.{decoder_key(head.block)}."
    dec = {k[len(d) :]: v for k, v in state.items() if k.startswith(d)}
    out.update({"decoder.mask_token": dec["mask_token"], "decoder.decoder_pos_embed": dec["pos_embed"]})
    for ours, theirs in (("embed", "decoder_embed"), ("norm", "decoder_norm"), ("pred", "decoder_pred")):
        for kind in ("weight", "bias"):
            out[f"decoder.{theirs}.{kind}"] = dec[f"{ours}.{kind}"]
    out.update(_layer_to_hf(dec, "blocks.", "decoder.decoder_layers.", head.decoder_depth))
    return {k: v.contiguous() for k, v in out.items()}


# ----------------------------------------------------------------------------- transformers -> deepmim


def is_hf_state(state: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.")) for k in state)


def _v4_names(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """transformers 5 names (vit.layers.N.attention.q_proj) -> transformers 4 names; 4's pass through."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^(vit\.)?layers\.", lambda m: f"{m.group(1) or ''}encoder.layer.", key)
        # transformers 5's save_pretrained writes the decoder's layers as `decoder.decoder_encoder.layer.N`
        key = key.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers.")
        for new, old in _V5_PARTS.items():
            key = key.replace(f".{new}.", f".{old}.")
        out[key] = value
    return out


def _layers_from_hf(
    state: Dict[str, torch.Tensor], theirs: str, ours: str
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    out, used = {}, []
    indices = sorted({int(m.group(1)) for k in state for m in [re.match(re.escape(theirs) + r"(\d+)\.", k)] if m})
    for i in indices:
        src, dst = f"{theirs}{i}.", f"{ours}{i}."
        for kind in ("weight", "bias"):
            names = [f"{src}attention.attention.{n}.{kind}" for n in _QKV]
            if all(n in state for n in names):
                out[f"{dst}attn.qkv.{kind}"] = torch.cat([state[n] for n in names], dim=0)
                used += names
            for a, b in _LAYER_PARTS.items():
                if f"{src}{b}.{kind}" in state:
                    out[f"{dst}{a}.{kind}"] = state[f"{src}{b}.{kind}"]
                    used.append(f"{src}{b}.{kind}")
    return out, used


def from_hf_state(
    state: Dict[str, torch.Tensor], decoder_block: Optional[int]
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """ViTMAEForPreTraining / ViTModel weights -> deepmim keys (the decoder under `decoder_block`).
    Returns (state, notes); keys nobody maps (a pooler, a classifier) are named in the notes, or raised
    on by the strict loader when they look like model weights."""
    state = _v4_names(state)
    prefix = "vit." if any(k.startswith("vit.") for k in state) else ""
    renames = {
        f"{prefix}embeddings.cls_token": "encoder.cls_token",
        f"{prefix}embeddings.position_embeddings": "encoder.pos_embed",
        f"{prefix}embeddings.patch_embeddings.projection.weight": "encoder.patch_embed.proj.weight",
        f"{prefix}embeddings.patch_embeddings.projection.bias": "encoder.patch_embed.proj.bias",
        f"{prefix}layernorm.weight": "encoder.norm.weight",
        f"{prefix}layernorm.bias": "encoder.norm.bias",
    }
    out = {ours: state[theirs] for theirs, ours in renames.items() if theirs in state}
    layers, used = _layers_from_hf(state, f"{prefix}encoder.layer.", "encoder.blocks.")
    out.update(layers)
    used += list(renames)
    if decoder_block is not None and any(k.startswith("decoder.") for k in state):
        d = f"decoders.{decoder_key(decoder_block)}."
        for theirs, ours in (("decoder.mask_token", "mask_token"), ("decoder.decoder_pos_embed", "pos_embed")):
            out[d + ours] = state[theirs]
            used.append(theirs)
        for theirs, ours in (("decoder_embed", "embed"), ("decoder_norm", "norm"), ("decoder_pred", "pred")):
            for kind in ("weight", "bias"):
                out[f"{d}{ours}.{kind}"] = state[f"decoder.{theirs}.{kind}"]
                used.append(f"decoder.{theirs}.{kind}")
        layers, used_dec = _layers_from_hf(state, "decoder.decoder_layers.", f"{d}blocks.")
        out.update(layers)
        used += used_dec
    left = sorted(set(state) - set(used))
    notes = (
        [
            f"left out {len(left)} tensors that deepmim's model has no place for: {', '.join(left[:6])}"
            + (" ..." if len(left) > 6 else "")
        ]
        if left
        else []
    )
    return out, notes


# ----------------------------------------------------------------------------- UperNet (segmentation)

# our UperNetViT's module path -> transformers' UperNetForSemanticSegmentation's (a BeitBackbone with add_fpn)
_UPERNET_PARTS = [
    (r"^backbone\.vit\.cls_token$", "backbone.beit.embeddings.cls_token"),
    (r"^backbone\.vit\.pos_embed$", "backbone.beit.embeddings.position_embeddings"),
    (r"^backbone\.vit\.patch_embed\.proj\.", "backbone.beit.embeddings.patch_embeddings.projection."),
    (r"^backbone\.vit\.blocks\.(\d+)\.gamma_(\d)$", r"backbone.beit.layers.\1.lambda_\2"),
    (r"^backbone\.vit\.blocks\.(\d+)\.norm1\.", r"backbone.beit.layers.\1.layernorm_before."),
    (r"^backbone\.vit\.blocks\.(\d+)\.norm2\.", r"backbone.beit.layers.\1.layernorm_after."),
    (r"^backbone\.vit\.blocks\.(\d+)\.attn\.q_bias$", r"backbone.beit.layers.\1.attention.q_proj.bias"),
    (r"^backbone\.vit\.blocks\.(\d+)\.attn\.v_bias$", r"backbone.beit.layers.\1.attention.v_proj.bias"),
    (r"^backbone\.vit\.blocks\.(\d+)\.attn\.proj\.", r"backbone.beit.layers.\1.attention.o_proj."),
    (
        r"^backbone\.vit\.blocks\.(\d+)\.attn\.relative_position_bias_table$",
        r"backbone.beit.layers.\1.relative_position_bias.relative_position_bias_table",
    ),
    (r"^backbone\.vit\.blocks\.(\d+)\.mlp\.", r"backbone.beit.layers.\1.mlp."),
    (r"^neck\.up4\.0\.", "backbone.fpn.fpn1.conv_transpose1."),
    (r"^neck\.up4\.1\.", "backbone.fpn.fpn1.normalization."),
    (r"^neck\.up4\.3\.", "backbone.fpn.fpn1.conv_transpose2."),
    (r"^neck\.up2\.", "backbone.fpn.fpn2."),
    (r"^decode_head\.ppm\.branches\.(\d+)\.1\.0\.", r"decode_head.psp_modules.\1.1.conv."),
    (r"^decode_head\.ppm\.branches\.(\d+)\.1\.1\.", r"decode_head.psp_modules.\1.1.batch_norm."),
    (r"^decode_head\.ppm_bottleneck\.0\.", "decode_head.bottleneck.conv."),
    (r"^decode_head\.ppm_bottleneck\.1\.", "decode_head.bottleneck.batch_norm."),
    (r"^decode_head\.laterals\.(\d+)\.0\.", r"decode_head.lateral_convs.\1.conv."),
    (r"^decode_head\.laterals\.(\d+)\.1\.", r"decode_head.lateral_convs.\1.batch_norm."),
    (r"^decode_head\.fpn_convs\.(\d+)\.0\.", r"decode_head.fpn_convs.\1.conv."),
    (r"^decode_head\.fpn_convs\.(\d+)\.1\.", r"decode_head.fpn_convs.\1.batch_norm."),
    (r"^decode_head\.fuse\.0\.", "decode_head.fpn_bottleneck.conv."),
    (r"^decode_head\.fuse\.1\.", "decode_head.fpn_bottleneck.batch_norm."),
    (r"^decode_head\.classifier\.", "decode_head.classifier."),
    (r"^aux_head\.conv\.0\.", "auxiliary_head.convs.0.conv."),
    (r"^aux_head\.conv\.1\.", "auxiliary_head.convs.0.batch_norm."),
    (r"^aux_head\.classifier\.", "auxiliary_head.classifier."),
]


def upernet_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A UperNetViT's weights under UperNetForSemanticSegmentation's names (transformers 5's BEiT names):
    the fused qkv weight split into q/k/v projections, BEiT's q and v biases as they are (no k bias in
    either). Every key is mapped or raised on: nothing is dropped silently."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        qkv = re.match(r"^backbone\.vit\.blocks\.(\d+)\.attn\.qkv\.weight$", key)
        if qkv:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"backbone.beit.layers.{qkv.group(1)}.attention.{name}.weight"] = part.contiguous()
            continue
        for pattern, replacement in _UPERNET_PARTS:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = value.contiguous()
                break
        else:
            raise KeyError(f"no UperNetForSemanticSegmentation name for {key}")
    return out


def upernet_config(
    enc: EncoderConfig,
    num_classes: int,
    crop_size: int,
    out_indices: List[int],
    channels: int,
    aux_channels: int,
    pool_scales: List[int],
    rel_pos_bias: bool,
    layer_scale: Optional[float],
    classes: Optional[List[str]] = None,
) -> Dict[str, Any]:
    """config.json of the UperNetForSemanticSegmentation equal to a UperNetViT: a BEiT backbone (absolute
    position embedding, per-block relative position bias, layer scale) whose maps after blocks out_indices
    (0-based; BEiT's stages count from 1, stage 0 being the embeddings) go through its FPN (add_fpn), raw as
    ours (use_mean_pooling: the BEiT model then builds no final LayerNorm, which the backbone never applies)."""
    backbone = {
        "model_type": "beit",
        **transformer_sizes(enc, crop_size),
        "drop_path_rate": 0.0,
        "use_absolute_position_embeddings": True,
        "use_relative_position_bias": rel_pos_bias,
        "use_shared_relative_position_bias": False,
        "layer_scale_init_value": float(layer_scale or 0.0),
        "use_mask_token": False,
        "use_mean_pooling": True,
        "out_indices": [i + 1 for i in out_indices],
        "add_fpn": True,
        "reshape_hidden_states": True,
    }
    names = classes or [str(i) for i in range(num_classes)]
    return {
        "model_type": "upernet",
        "architectures": ["UperNetForSemanticSegmentation"],
        "backbone_config": backbone,
        "hidden_size": channels,
        "pool_scales": list(pool_scales),
        "use_auxiliary_head": bool(aux_channels),
        "auxiliary_in_channels": enc.embed_dim,
        "auxiliary_channels": aux_channels or 256,
        "auxiliary_num_convs": 1,
        "auxiliary_concat_input": False,
        "loss_ignore_index": 255,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }
