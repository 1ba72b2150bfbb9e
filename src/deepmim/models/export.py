"""Export the encoder in timm's VisionTransformer layout (safetensors), with the preprocessing that
goes with the weights: timm's `pretrained_cfg` (mean, std, input size, crop, interpolation) and
`model_args`, the `timm.create_model(...)` call that rebuilds the model, and transformers' image
processor config. Without them timm falls back to mean/std 0.5 and transformers has no processor."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from timm.layers import resample_abs_pos_embed

from ..checkpoint import save_weights
from ..config.schema import IMAGENET_MEAN, IMAGENET_STD, EncoderConfig

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


def encoder_metadata(model, img_size: Optional[int] = None) -> Dict[str, str]:
    """The architecture of an exported encoder (num_heads is not in the weights: deepmim's teacher target
    reads it from here)."""
    c = _encoder(model).cfg
    return {
        "format": "pt",
        "img_size": str(img_size or c.img_size),
        "patch_size": str(c.patch_size),
        "in_chans": str(c.in_chans),
        "embed_dim": str(c.embed_dim),
        "depth": str(c.depth),
        "num_heads": str(c.num_heads),
        "timm_model": timm_model_name(model) or "",
    }


def export_encoder(
    model, out_path: Path, img_size: Optional[int] = None, metadata: Optional[Dict[str, str]] = None
) -> Path:
    """The encoder as safetensors in timm's layout, its architecture (and `metadata`) in the header."""
    return save_weights(
        encoder_state_dict(model, img_size), out_path, {**encoder_metadata(model, img_size), **(metadata or {})}
    )


# ----------------------------------------------------------------------------- preprocessing

TIMM_CONFIG = "config.json"
TIMM_WEIGHTS = "model.safetensors"
HF_PROCESSOR_CONFIG = "preprocessor_config.json"
TIMM_LAYER_NORM_EPS = 1e-6  # timm's VisionTransformer builds LayerNorm(eps=1e-6); model_args cannot change it


@dataclass(frozen=True)
class Preprocessing:
    """What an image goes through before the model, as deepmim's evaluation transforms do it: resize the
    short side to img_size / crop_pct (bicubic), centre-crop img_size, scale to [0, 1], normalise by
    mean / std (one value per input channel). Exports write it in each library's words so that timm's
    `resolve_data_config` + `create_transform` and transformers' `AutoImageProcessor` prepare images
    the way the weights were trained on."""

    img_size: int
    mean: Tuple[float, ...] = tuple(IMAGENET_MEAN)
    std: Tuple[float, ...] = tuple(IMAGENET_STD)
    crop_pct: float = 1.0
    interpolation: str = "bicubic"

    @property
    def in_chans(self) -> int:
        return len(self.mean)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "img_size": self.img_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }

    def timm_pretrained_cfg(self, num_classes: int, label_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """timm's `pretrained_cfg`: what `timm.data.resolve_data_config(model=...)` reads."""
        cfg = {
            "input_size": (self.in_chans, self.img_size, self.img_size),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": "center",
            "mean": list(self.mean),
            "std": list(self.std),
            "num_classes": num_classes,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "fixed_input_size": True,
        }
        if label_names:
            cfg["label_names"] = list(label_names)
        return cfg

    def hf_processor_config(self) -> Dict[str, Any]:
        """preprocessor_config.json for transformers' `BitImageProcessor` (AutoImageProcessor loads it): the
        processor whose resize-short-side + centre-crop is deepmim's (ViTImageProcessor stretches to a square)."""
        short_side = int(self.img_size / self.crop_pct)  # timm's rounding (floor), as fine-tuning's evaluation
        return {
            "image_processor_type": "BitImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": short_side},
            "resample": {"bicubic": 3, "bilinear": 2}[self.interpolation],
            "do_center_crop": True,
            "crop_size": {"height": self.img_size, "width": self.img_size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": self.in_chans == 3,
        }


def preprocessing_of(
    config: Dict[str, Any], img_size: int, in_chans: int, crop_pct: Optional[float] = None, pixel_scale: float = 1.0
) -> Preprocessing:
    """A run's preprocessing from its config dict: `data.mean` / `data.std` (divided by `pixel_scale` for
    statistics on 0-255 pixels), the crop of its evaluation (fine-tuning: `augment.eval_crop_pct`; else 1.0,
    as deepmim's feature extraction). Weights without a config get ImageNet's statistics (MAE's)."""
    data = config.get("data") or {}
    mean = [float(v) / pixel_scale for v in data.get("mean") or IMAGENET_MEAN[:in_chans]]
    std = [float(v) / pixel_scale for v in data.get("std") or IMAGENET_STD[:in_chans]]
    if crop_pct is None:
        crop_pct = float((config.get("augment") or {}).get("eval_crop_pct", 1.0))
    return Preprocessing(img_size, tuple(mean), tuple(std), crop_pct)


def timm_architecture(enc: EncoderConfig) -> str:
    """A timm model name for the architecture; `model_args` set every size, so the name only picks defaults."""
    return TIMM_NAMES.get((enc.embed_dim, enc.depth, enc.patch_size), "vit_base_patch16_224")


def timm_model_args(
    enc: EncoderConfig, img_size: Optional[int] = None, global_pool: Optional[str] = None
) -> Dict[str, Any]:
    """The VisionTransformer arguments that rebuild this encoder in timm (num_classes travels apart)."""
    args = {
        "img_size": img_size or enc.img_size,
        "patch_size": enc.patch_size,
        "in_chans": enc.in_chans,
        "embed_dim": enc.embed_dim,
        "depth": enc.depth,
        "num_heads": enc.num_heads,
        "mlp_ratio": enc.mlp_ratio,
        "qkv_bias": enc.qkv_bias,
    }
    if global_pool is not None:
        args["global_pool"] = global_pool
    return args


def timm_call(name: str, **kwargs: Any) -> str:
    """`timm.create_model(...)` as one line of Python that can be run as printed."""
    parts = [repr(name)] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"timm.create_model({', '.join(parts)})"


def timm_folder_call(out: Path) -> str:
    return timm_call(f"local-dir:{out}", pretrained=True)


def timm_file_call(
    enc: EncoderConfig,
    path: Path,
    pre: Preprocessing,
    num_classes: int,
    img_size: Optional[int] = None,
    global_pool: Optional[str] = None,
) -> str:
    """The call that loads a lone weights file with its architecture and preprocessing (pretrained_cfg_overlay:
    what resolve_data_config then reads)."""
    overlay = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in pre.timm_pretrained_cfg(num_classes).items()
        if k in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
    }
    return timm_call(
        timm_architecture(enc),
        num_classes=num_classes,
        **timm_model_args(enc, img_size, global_pool),
        checkpoint_path=str(path),
        pretrained_cfg_overlay=overlay,
    )


def timm_folder_config(
    enc: EncoderConfig,
    pre: Preprocessing,
    num_classes: int,
    global_pool: Optional[str] = None,
    label_names: Optional[Sequence[str]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """config.json of a timm model folder (the layout timm's push_to_hub writes): architecture, num_classes,
    model_args and pretrained_cfg; `extra` is kept under the key "deepmim" (timm ignores it)."""
    config = {
        "architecture": timm_architecture(enc),
        "num_classes": num_classes,
        "num_features": enc.embed_dim,
        "global_pool": global_pool or "token",
        "model_args": timm_model_args(enc, pre.img_size, global_pool),
        "pretrained_cfg": pre.timm_pretrained_cfg(num_classes, label_names),
    }
    if extra:
        config["deepmim"] = extra
    return config


def write_timm_folder(
    state: Dict[str, torch.Tensor], config: Dict[str, Any], out: Path, metadata: Dict[str, str]
) -> Path:
    """config.json + model.safetensors: `timm.create_model("local-dir:OUT", pretrained=True)` loads it."""
    out.mkdir(parents=True, exist_ok=True)
    save_weights(state, out / TIMM_WEIGHTS, metadata)
    (out / TIMM_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out
