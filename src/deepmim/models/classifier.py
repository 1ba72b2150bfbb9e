"""The fine-tuned classifier: timm's VisionTransformer (the same weights' names, the same forward, so its state
dict loads into `timm.create_model(...)` as it is) that saves and loads Hub-style (models/hub.py) with its
architecture, class names and preprocessing in config.json."""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Dict, List, Optional, Union

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..config.loader import ConfigError
from ..config.schema import EncoderConfig
from .export import Preprocessing
from .hub import HubWeights


class ViTClassifier(VisionTransformer, HubWeights, tags=["image-classification"], pipeline_tag="image-classification"):
    """`encoder`: the pre-trained encoder's architecture (img_size is the classifier's own); global_pool avg:
    the mean patch token through a new fc_norm, no final norm (MAE's fine-tuning) | token: the normed cls
    token. `preprocessing` (a Preprocessing as a dict) becomes timm's `pretrained_cfg`, so
    `timm.data.resolve_data_config(model=classifier)` gives the evaluation transform it was scored with."""

    def __init__(self, encoder: Union[Dict[str, Any], EncoderConfig], num_classes: int, img_size: int,
                 global_pool: str = "avg", drop_path: float = 0.0, classes: Optional[List[str]] = None,
                 preprocessing: Optional[Dict[str, Any]] = None):
        enc = encoder if isinstance(encoder, EncoderConfig) else EncoderConfig(**encoder)
        if global_pool not in ("avg", "token"):
            raise ConfigError(f"model.global_pool must be avg or token, got {global_pool!r}")
        super().__init__(img_size=img_size, patch_size=enc.patch_size, in_chans=enc.in_chans,
                         embed_dim=enc.embed_dim, depth=enc.depth, num_heads=enc.num_heads,
                         mlp_ratio=enc.mlp_ratio, qkv_bias=enc.qkv_bias, num_classes=num_classes,
                         global_pool=global_pool, drop_path_rate=drop_path,
                         norm_layer=partial(nn.LayerNorm, eps=enc.norm_eps))
        self.encoder_cfg = dataclasses.replace(enc, img_size=img_size)
        self.classes = list(classes) if classes else None
        self.preprocessing: Optional[Preprocessing] = None
        if preprocessing is not None:
            self.preprocessing = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in preprocessing.items()})
            self.pretrained_cfg = self.preprocessing.timm_pretrained_cfg(num_classes, self.classes)
