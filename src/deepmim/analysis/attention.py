"""Attention maps of every head in every block, and the mean attention distance of each head.

Maps are recomputed from each timm `Attention` module's own weights on the input it receives
(a forward pre-hook on `block.attn`: the input is already `norm1(x)`), so the encoder's fast path
(fused scaled-dot-product attention) stays untouched: softmax(q k^T * scale) with q, k from `attn.qkv`
after `attn.q_norm` / `attn.k_norm`, exactly what the module computes when not fused.

Attention distance (ViT, MAE and the MIM literature): for a head, the attention-weighted mean
spatial distance in pixels between a query patch and the patches it attends to, averaged over
query patches and images. Distances are between patch centres: patch-grid distance x patch size.
The cls token is excluded on both sides: only patch queries count, and each query's weights over the
patch keys are renormalised to sum to 1 (the attention a query gives to the cls token carries no
position). Uniform attention therefore gives the mean pairwise distance of the grid and attention on
the query itself gives 0. The spread of the per-head distances within a block is the diversity figure.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader


def patch_distances(grid_size: int, patch_size: int) -> torch.Tensor:
    """(L, L) Euclidean distances in pixels between the patch centres of a grid_size x grid_size grid
    (row-major patch order, as PatchEmbed flattens)."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], dim=1).double() * patch_size
    return torch.cdist(coords, coords)


def uniform_attention_distance(grid_size: int, patch_size: int) -> float:
    """The attention distance of uniform attention: the mean distance over all (query, key) patch pairs,
    the query itself included. The reference a head's distance is read against."""
    return float(patch_distances(grid_size, patch_size).mean())


def attention_distance(attn: torch.Tensor, grid_size: int, patch_size: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Per-head mean attention distance (pixels) of maps `attn` (B, H, N, N), N = prefix + grid_size**2.

    Returns (H,) float64: per query, sum_k w_qk * d_qk with w renormalised over the patch keys, then the
    mean over the patch queries and the B images."""
    if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention maps must be (B, H, N, N), got {tuple(attn.shape)}")
    n_patches = grid_size * grid_size
    if attn.shape[-1] != num_prefix_tokens + n_patches:
        raise ValueError(
            f"{attn.shape[-1]} tokens do not make {num_prefix_tokens} prefix tokens + a {grid_size}x{grid_size} grid"
        )
    w = attn[..., num_prefix_tokens:, num_prefix_tokens:].double()
    w = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    dist = patch_distances(grid_size, patch_size).to(w.device)
    per_query = (w * dist).sum(dim=-1)  # (B, H, L)
    return per_query.mean(dim=(0, 2)).cpu()


def attention_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale) of a timm Attention module on its input x (B, N, C): (B, H, N, N)."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q.float() * attn.scale) @ k.float().transpose(-2, -1)).softmax(dim=-1)


@contextmanager
def record_attention(
    encoder: nn.Module, blocks: Optional[Sequence[int]] = None
) -> Iterator[Dict[int, List[torch.Tensor]]]:
    """Within the context every forward of `encoder` appends each tapped block's (B, H, N, N) maps to
    `maps[block]` (1-based). Hooks are removed on exit."""
    blocks = list(blocks) if blocks else list(range(1, len(encoder.blocks) + 1))
    maps: Dict[int, List[torch.Tensor]] = {b: [] for b in blocks}
    handles = []
    for b in blocks:
        module = encoder.blocks[b - 1].attn

        def hook(mod, inputs, _b=b):
            maps[_b].append(attention_probs(mod, inputs[0]).detach())

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield maps
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def attention_distances(
    encoder: nn.Module,
    loader: DataLoader,
    device: torch.device,
    max_images: int,
    progress: bool = False,
    desc: str = "attention",
) -> torch.Tensor:
    """(depth, heads) mean attention distance in pixels of every head of every block, over the first
    `max_images` images of `loader` (full images, no masking)."""
    from ..training.progress import task_bar

    encoder = encoder.to(device).eval()
    grid, patch = encoder.grid_size, encoder.cfg.patch_size
    total = torch.zeros(encoder.depth, encoder.cfg.num_heads, dtype=torch.float64)
    seen = 0
    bar = task_bar(total=max_images, desc=desc, enabled=progress)
    for batch in loader:
        images = batch[0][: max_images - seen]
        if images.numel() == 0:
            continue
        with record_attention(encoder) as maps:
            encoder(images.to(device))
        for b, chunks in maps.items():
            total[b - 1] += attention_distance(chunks[0], grid, patch) * images.shape[0]
        seen += images.shape[0]
        bar.update(images.shape[0])
        if seen >= max_images:
            break
    bar.close()
    if seen == 0:
        raise ValueError("no images to measure attention distance on")
    return (total / seen).float()
