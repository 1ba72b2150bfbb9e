"""Frozen teachers for the `teacher` target. Every kind is loaded into a timm ViT (stand on
timm: its CLIP converter, its position-embedding resampling), wrapped in `TeacherNet`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import nn

from ...config.loader import ConfigError
from ...models.loading import CheckpointError, extract_state_dict, read_state_file

KINDS = ("openai_clip", "open_clip", "timm", "deepmim")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class TeacherNet(nn.Module):
    """image -> patch tokens (cls/register tokens dropped) after the final norm, and after
    `proj` (CLIP's image projection) when given. Frozen and always in eval mode."""

    def __init__(self, vit: nn.Module, proj: Optional[torch.Tensor] = None):
        super().__init__()
        patch_embed = getattr(vit, "patch_embed", None)
        if patch_embed is None or not hasattr(patch_embed, "patch_size") or not hasattr(vit, "forward_features"):
            raise ConfigError(f"teacher target: {type(vit).__name__} is not a ViT with a patch embedding; "
                              f"use a ViT-style teacher whose tokens form a patch grid")
        self.vit = vit
        self.register_buffer("proj", proj, persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "TeacherNet":
        return super().train(False)

    @property
    def in_chans(self) -> int:
        return self.vit.patch_embed.proj.weight.shape[1]

    @property
    def out_dim(self) -> int:
        return self.proj.shape[1] if self.proj is not None else self.vit.num_features

    def input_size_for(self, grid: Tuple[int, int]) -> Tuple[int, int]:
        """The input size giving a `grid` of patch tokens; resamples the position embedding
        (timm's set_input_size -> resample_abs_pos_embed) when the teacher's own grid differs."""
        embed = self.vit.patch_embed
        ph, pw = embed.patch_size
        size = (grid[0] * ph, grid[1] * pw)
        if tuple(embed.grid_size) != tuple(grid):
            if not hasattr(self.vit, "set_input_size"):
                raise ConfigError(
                    f"teacher target: the teacher's patch grid is {tuple(embed.grid_size)} and the student's "
                    f"{tuple(grid)}; {type(self.vit).__name__} cannot change its input size. Make the grids equal: "
                    f"student img_size / patch_size must equal teacher img_size / patch_size")
            self.vit.set_input_size(img_size=size)
            self.requires_grad_(False)
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)
        if tokens.dim() != 3:
            raise ConfigError(f"teacher target: forward_features returned shape {tuple(tokens.shape)}, not tokens")
        tokens = tokens[:, getattr(self.vit, "num_prefix_tokens", 1):]
        return tokens @ self.proj.to(tokens.dtype) if self.proj is not None else tokens


def read_weights(path_or_obj) -> dict:
    """The weights in a checkpoint (file or loaded dict), unwrapped ('model' / 'state_dict'),
    without DDP's 'module.' prefix."""
    obj = read_state_file(path_or_obj) if isinstance(path_or_obj, (str, Path)) else path_or_obj
    state = extract_state_dict(obj)
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_strict(module: nn.Module, state: dict) -> None:
    """load_state_dict that names every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [f"shape of {k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                 for k, v in state.items() if k in own and v.shape != own[k].shape]
    if problems:
        raise CheckpointError("weights do not fit the teacher model: " + "; ".join(problems))
    module.load_state_dict(state)


def load_teacher(cfg) -> Tuple[TeacherNet, List[float], List[float]]:
    """-> (frozen TeacherNet, the teacher's default input mean, std)."""
    if cfg.kind not in KINDS:
        raise ConfigError(f"teacher target: kind must be one of {', '.join(KINDS)}, got {cfg.kind!r}")
    if not cfg.path:
        raise ConfigError("teacher target: set `path` to the teacher's weights file")
    try:
        if cfg.kind in ("openai_clip", "open_clip"):
            from .clip import load_clip
            quick_gelu = cfg.quick_gelu
            if quick_gelu is None:  # OpenAI trained with QuickGELU; open_clip's own models use GELU
                quick_gelu = cfg.kind == "openai_clip" or "quickgelu" in (cfg.model or "").lower()
            return TeacherNet(*load_clip(cfg.path, quick_gelu, cfg.num_heads)), CLIP_MEAN, CLIP_STD
        if cfg.kind == "timm":
            from .timm_vit import load_timm
            return load_timm(cfg.path, cfg.model, cfg.model_kwargs)
        from .deepmim_encoder import load_deepmim_encoder
        return load_deepmim_encoder(cfg.path, cfg.num_heads)
    except CheckpointError as err:
        raise CheckpointError(f"teacher target ({cfg.kind}, {cfg.path}): {err}") from err
