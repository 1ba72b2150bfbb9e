"""The fine-tuned classifier: timm's VisionTransformer (the same weights' names, the same forward, so its state
dict loads into `timm.create_model(...)` as it is) that saves and loads Hub-style (models/hub.py) with its
architecture, class names and preprocessing in config.json; built from a pre-trained encoder for fine-tuning
(`build_classifier`) and from a fine-tuning checkpoint's record to read it back (`trained_classifier`)."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..checkpoint import load_strict
from ..config.loader import ConfigError, from_dict, to_dict
from ..config.schema import ClassifierConfig, EncoderConfig, FinetuneConfig
from .export import Preprocessing, preprocessing_of
from .hub import HubWeights
from .loading import pretrained_encoder


class ViTClassifier(VisionTransformer, HubWeights, tags=["image-classification"], pipeline_tag="image-classification"):
    """`encoder`: the pre-trained encoder's architecture (img_size is the classifier's own); global_pool avg:
    the mean patch token through a new fc_norm, no final norm (MAE's fine-tuning) | token: the normed cls
    token. `preprocessing` (a Preprocessing as a dict) becomes timm's `pretrained_cfg`, so
    `timm.data.resolve_data_config(model=classifier)` gives the evaluation transform it was scored with."""

    def __init__(
        self,
        encoder: Union[Dict[str, Any], EncoderConfig],
        num_classes: int,
        img_size: int,
        global_pool: str = "avg",
        drop_path: float = 0.0,
        classes: Optional[List[str]] = None,
        preprocessing: Optional[Dict[str, Any]] = None,
    ):
        enc = encoder if isinstance(encoder, EncoderConfig) else EncoderConfig(**encoder)
        if global_pool not in ("avg", "token"):
            raise ConfigError(f"model.global_pool must be avg or token, got {global_pool!r}")
        super().__init__(
            img_size=img_size,
            patch_size=enc.patch_size,
            in_chans=enc.in_chans,
            embed_dim=enc.embed_dim,
            depth=enc.depth,
            num_heads=enc.num_heads,
            mlp_ratio=enc.mlp_ratio,
            qkv_bias=enc.qkv_bias,
            num_classes=num_classes,
            global_pool=global_pool,
            drop_path_rate=drop_path,
            norm_layer=partial(nn.LayerNorm, eps=enc.norm_eps),
        )
        self.encoder_cfg = dataclasses.replace(enc, img_size=img_size)
        self.classes = list(classes) if classes else None
        self.preprocessing: Optional[Preprocessing] = None
        if preprocessing is not None:
            self.preprocessing = Preprocessing(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in preprocessing.items()}
            )
            self.pretrained_cfg = self.preprocessing.timm_pretrained_cfg(num_classes, self.classes)


def vit_classifier(
    enc: EncoderConfig,
    num_classes: int,
    img_size: int,
    global_pool: str = "avg",
    drop_path: float = 0.0,
    classes=None,
    preprocessing=None,
) -> ViTClassifier:
    """A ViTClassifier with the architecture of `enc` (avg pooling: new fc_norm, no final norm), random weights."""
    return ViTClassifier(dataclasses.asdict(enc), num_classes, img_size, global_pool, drop_path, classes, preprocessing)


def build_classifier(cfg: ClassifierConfig, num_classes: int, img_size: int) -> Tuple[ViTClassifier, EncoderConfig]:
    """The classifier fine-tuning starts from, initialised from the pre-trained encoder: position embedding
    resampled when img_size differs; with average pooling the pre-trained final norm is dropped (MAE)."""
    from timm.layers import resample_abs_pos_embed, trunc_normal_

    enc, state = pretrained_encoder(cfg.checkpoint, cfg.preset)
    vit = vit_classifier(enc, num_classes, img_size, cfg.global_pool, cfg.drop_path)
    if state is not None:
        grid = img_size // enc.patch_size
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [grid, grid], num_prefix_tokens=1)
        if cfg.global_pool == "avg":
            state = {k: v for k, v in state.items() if not k.startswith("norm.")}
        load_strict(
            vit,
            state,
            context="pre-trained weights do not fit the classifier",
            allow_missing=("head.*", "fc_norm.*", "norm.*"),
        )
    trunc_normal_(vit.head.weight, std=cfg.head_init_std)
    nn.init.zeros_(vit.head.bias)
    return vit, enc


def trained_classifier(cfg: FinetuneConfig, arch: Dict[str, Any]) -> ViTClassifier:
    """The classifier a fine-tuning checkpoint holds, before its weights load (the record of its kind names
    this): its class names and evaluation preprocessing come along, for save_pretrained and timm."""
    enc = from_dict(EncoderConfig, arch["encoder"])
    pre = preprocessing_of(to_dict(cfg), cfg.data.img_size, enc.in_chans)
    return vit_classifier(
        enc,
        arch["num_classes"],
        cfg.data.img_size,
        cfg.model.global_pool,
        classes=arch.get("classes"),
        preprocessing=pre.to_dict(),
    )
