"""Fixed 2-D sin-cos position embeddings in MAE's layout (so released checkpoints match)."""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed


def sincos_pos_embed(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """(1, [1 +] grid_size**2, dim) embedding, with a zero row for the cls token.

    MAE concatenates [sin(x), cos(x), sin(y), cos(y)] where x is the column index;
    timm's builder (interleave_sin_cos) gives [sin(y), cos(y), sin(x), cos(x)], so swap halves.
    """
    emb = build_sincos2d_pos_embed([grid_size, grid_size], dim=dim, interleave_sin_cos=True)
    emb = torch.cat([emb[:, dim // 2 :], emb[:, : dim // 2]], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb.unsqueeze(0)
