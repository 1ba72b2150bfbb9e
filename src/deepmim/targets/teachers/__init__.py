"""Frozen teachers for the `teacher` target. Every kind is loaded into a timm ViT (stand on
timm: its CLIP converter, its position-embedding resampling), wrapped in `TeacherNet`."""

from __future__ import annotations

from typing import List, Tuple

from ...checkpoint import CheckpointError
from ...config.loader import ConfigError
from .clip import CLIP_MEAN, CLIP_STD, load_clip
from .deepmim_encoder import load_deepmim_encoder
from .net import TeacherNet
from .timm_vit import load_timm

KINDS = ("openai_clip", "open_clip", "timm", "deepmim")
__all__ = ["CLIP_MEAN", "CLIP_STD", "KINDS", "TeacherNet", "load_teacher"]


def load_teacher(cfg) -> Tuple[TeacherNet, List[float], List[float]]:
    """-> (frozen TeacherNet, the teacher's default input mean, std)."""
    if cfg.kind not in KINDS:
        raise ConfigError(f"teacher target: kind must be one of {', '.join(KINDS)}, got {cfg.kind!r}")
    if not cfg.path:
        raise ConfigError("teacher target: set `path` to the teacher's weights file")
    try:
        if cfg.kind in ("openai_clip", "open_clip"):
            quick_gelu = cfg.quick_gelu
            if quick_gelu is None:  # OpenAI trained with QuickGELU; open_clip's own models use GELU
                quick_gelu = cfg.kind == "openai_clip" or "quickgelu" in (cfg.model or "").lower()
            return TeacherNet(*load_clip(cfg.path, quick_gelu, cfg.num_heads)), CLIP_MEAN, CLIP_STD
        if cfg.kind == "timm":
            return load_timm(cfg.path, cfg.model, cfg.model_kwargs)
        return load_deepmim_encoder(cfg.path, cfg.num_heads)
    except CheckpointError as err:
        raise CheckpointError(f"teacher target ({cfg.kind}, {cfg.path}): {err}") from err
