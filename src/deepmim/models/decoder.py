"""The one decoder class; DeepMIM instantiates it once per supervised depth."""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .encoder import init_linear_and_norm
from .masking import Masking, take_tokens
from .pos_embed import sincos_pos_embed


class MaskedDecoder(nn.Module):
    """MAE's decoder: embed to width, fill masked slots with a mask token, add a frozen
    sin-cos position embedding, run `depth` Transformer blocks, norm, predict `out_dim`
    values per patch. Returns predictions for all patches (cls dropped)."""

    def __init__(
        self,
        in_dim: int,
        num_patches: int,
        dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        out_dim: int = 768,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        grid = int(round(num_patches**0.5))
        if grid * grid != num_patches:
            raise ValueError(f"decoder needs a square patch grid, got {num_patches} patches")
        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by its {num_heads} heads")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(dim, grid), requires_grad=False)
        self.blocks = nn.Sequential(
            *[Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
        )
        self.norm = norm_layer(dim)
        self.pred = nn.Linear(dim, out_dim)
        init_linear_and_norm(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def set_fused_attn(self, enabled: bool) -> None:
        for block in self.blocks:
            block.attn.fused_attn = enabled

    def forward(self, tokens: torch.Tensor, masking: Masking) -> torch.Tensor:
        """tokens: (N, 1 + L_visible, in_dim) encoder output -> (N, L, out_dim)."""
        x = self.embed(tokens)
        n, num_visible_plus_cls, _ = x.shape
        num_masked = masking.ids_restore.shape[1] + 1 - num_visible_plus_cls
        patches = torch.cat([x[:, 1:, :], self.mask_token.expand(n, num_masked, -1)], dim=1)
        patches = take_tokens(patches, masking.ids_restore)
        x = torch.cat([x[:, :1, :], patches], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.pred(x[:, 1:, :])
