"""Any timm ViT by model name + a local weights file (the classifier head is not needed)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import timm

from ...checkpoint import load_strict, read_checkpoint
from ...config.loader import ConfigError
from ...config.schema import IMAGENET_MEAN, IMAGENET_STD
from .net import MISFIT, TeacherNet


def load_timm(
    path: str, name: Optional[str], model_kwargs: Dict[str, Any]
) -> Tuple[TeacherNet, List[float], List[float]]:
    if not name:
        raise ConfigError("teacher target: kind=timm needs `model`, the timm model name (e.g. vit_base_patch16_224)")
    vit = timm.create_model(name, pretrained=False, num_classes=0, **model_kwargs)
    state = {k: v for k, v in read_checkpoint(path).model_state.items() if not k.startswith("head.")}
    load_strict(vit, state, context=MISFIT)
    cfg = getattr(vit, "pretrained_cfg", None) or {}
    return TeacherNet(vit), list(cfg.get("mean", IMAGENET_MEAN)), list(cfg.get("std", IMAGENET_STD))
