"""The frozen teacher every kind is loaded into: a timm ViT's patch tokens, optionally projected."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ...config.loader import ConfigError

MISFIT = "weights do not fit the teacher model"  # the strict loader's message for every kind


class TeacherNet(nn.Module):
    """image -> patch tokens (cls/register tokens dropped) after the final norm, and after
    `proj` (CLIP's image projection) when given. Frozen and always in eval mode."""

    def __init__(self, vit: nn.Module, proj: Optional[torch.Tensor] = None):
        super().__init__()
        patch_embed = getattr(vit, "patch_embed", None)
        if patch_embed is None or not hasattr(patch_embed, "patch_size") or not hasattr(vit, "forward_features"):
            raise ConfigError(
                f"teacher target: {type(vit).__name__} is not a ViT with a patch embedding; "
                f"use a ViT-style teacher whose tokens form a patch grid"
            )
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
                    f"student img_size / patch_size must equal teacher img_size / patch_size"
                )
            self.vit.set_input_size(img_size=size)
            self.requires_grad_(False)
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)
        if tokens.dim() != 3:
            raise ConfigError(f"teacher target: forward_features returned shape {tuple(tokens.shape)}, not tokens")
        tokens = tokens[:, getattr(self.vit, "num_prefix_tokens", 1) :]
        return tokens @ self.proj.to(tokens.dtype) if self.proj is not None else tokens
