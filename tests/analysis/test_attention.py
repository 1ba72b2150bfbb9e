"""Attention distance: against scipy and hand-built maps, and recorded from a real encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist

from deepmim.analysis.attention import (
    attention_distance,
    attention_distances,
    patch_distances,
    record_attention,
    uniform_attention_distance,
)
from deepmim.config.schema import EncoderConfig
from deepmim.models.encoder import MaskedViTEncoder


def grid_coords(grid: int, patch: int) -> np.ndarray:
    """Patch positions in pixels, row-major, computed independently of the code under test."""
    return np.array([[r * patch, c * patch] for r in range(grid) for c in range(grid)], dtype=float)


def test_patch_distances_match_scipy():
    d = patch_distances(5, 16).numpy()
    assert np.allclose(d, cdist(grid_coords(5, 16), grid_coords(5, 16)))
    assert d[0, 4] == 64 and d[0, 6] == pytest.approx(16 * 2**0.5)


def test_attention_on_the_query_itself_is_distance_zero():
    n = 1 + 16
    attn = torch.eye(n).expand(3, 2, n, n)  # (B, H, N, N)
    assert torch.all(attention_distance(attn, 4, 8) == 0)
    # half of every patch query's attention on the cls token, half on itself: still 0 (cls carries no position)
    half = torch.eye(n) * 0.5
    half[:, 0] += 0.5
    assert torch.allclose(attention_distance(half.expand(1, 1, n, n), 4, 8), torch.zeros(1, dtype=torch.float64))


@pytest.mark.parametrize("grid,patch", [(4, 8), (7, 16), (3, 4)])
def test_uniform_attention_gives_the_mean_pairwise_distance(grid, patch):
    n = 1 + grid * grid
    attn = torch.full((2, 3, n, n), 1.0 / n)  # uniform over all tokens, cls included
    coords = grid_coords(grid, patch)
    # mean over all ordered (query, key) pairs, the query itself included (distance 0)
    expected = pdist(coords).sum() * 2 / (grid * grid) ** 2
    assert torch.allclose(attention_distance(attn, grid, patch), torch.full((3,), expected, dtype=torch.float64))
    assert uniform_attention_distance(grid, patch) == pytest.approx(expected)


def test_hand_built_maps_per_head():
    grid, patch = 4, 10
    L = grid * grid
    coords = grid_coords(grid, patch)
    attn = torch.zeros(2, 3, 1 + L, 1 + L)
    attn[:, 0, 1:, 1:] = torch.eye(L)  # head 0: itself
    attn[:, 1, 1:, 1] = 1.0  # head 1: every query on patch 0 (the top-left corner)
    # head 2: 0.25 on itself, 0.75 on the patch to the right where there is one, else on itself
    for q in range(L):
        right = q + 1 if (q % grid) < grid - 1 else q
        attn[:, 2, 1 + q, 1 + q] += 0.25
        attn[:, 2, 1 + q, 1 + right] += 0.75
    attn[:, :, 0, 0] = 1.0  # the cls query (ignored)
    got = attention_distance(attn, grid, patch)
    expected_1 = np.linalg.norm(coords - coords[0], axis=1).mean()
    expected_2 = 0.75 * patch * (grid - 1) / grid  # the last column has no right neighbour
    assert got[0] == 0
    assert got[1] == pytest.approx(expected_1)
    assert got[2] == pytest.approx(expected_2)
    # the batch is averaged: a second image with uniform head 0 moves head 0 to half the pairwise mean
    attn2 = attn.clone()
    attn2[1, 0] = 1.0 / (1 + L)
    assert attention_distance(attn2, grid, patch)[0] == pytest.approx(pdist(coords).sum() * 2 / L**2 / 2)


def test_attention_distance_rejects_wrong_token_count():
    with pytest.raises(ValueError, match="prefix"):
        attention_distance(torch.ones(1, 1, 10, 10) / 10, 4, 8)


def small_encoder(depth=3, heads=2):
    torch.manual_seed(0)
    enc = MaskedViTEncoder(EncoderConfig(img_size=16, patch_size=4, embed_dim=32, depth=depth, num_heads=heads))
    with torch.no_grad():  # sharper, head-specific attention than the init's near-uniform maps
        for b in enc.blocks:
            b.attn.qkv.weight.mul_(6)
    return enc.eval()


def test_recorded_maps_are_the_blocks_attention():
    """softmax(q k^T scale) from the hooks, times v and the projection, is exactly what the (fused) block computes."""
    enc = small_encoder()
    images = torch.randn(2, 3, 16, 16)
    outputs = {}
    handles = [
        enc.blocks[i].attn.register_forward_hook(lambda m, inp, out, i=i: outputs.__setitem__(i, (inp[0], out)))
        for i in range(3)
    ]
    with torch.no_grad(), record_attention(enc) as maps:
        enc(images)
    for h in handles:
        h.remove()
    assert all(not b.attn._forward_pre_hooks for b in enc.blocks)  # the hooks are gone
    for i in range(3):
        x, out = outputs[i]
        attn = enc.blocks[i].attn
        probs = maps[i + 1][0]
        assert probs.shape == (2, 2, 17, 17) and torch.allclose(probs.sum(-1), torch.ones(2, 2, 17))
        v = attn.qkv(x).reshape(2, 17, 3, 2, 16).permute(2, 0, 3, 1, 4)[2]
        manual = attn.proj((probs @ v).transpose(1, 2).reshape(2, 17, 32))
        assert torch.allclose(manual, out, atol=1e-5)


def test_attention_distances_of_an_encoder():
    enc = small_encoder(depth=3, heads=2)
    images = torch.randn(10, 3, 16, 16)
    loader = [(images[:4], None), (images[4:], None)]
    d = attention_distances(enc, loader, torch.device("cpu"), max_images=6)
    assert d.shape == (3, 2)
    assert torch.all(d >= 0) and torch.all(d <= 4 * 3 * 2**0.5)
    with torch.no_grad(), record_attention(enc, blocks=[2]) as maps:
        enc(images[:6])
    assert torch.allclose(d[1].double(), attention_distance(maps[2][0], 4, 4), atol=1e-5)
