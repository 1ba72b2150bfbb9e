"""Sine-cosine position embeddings in MAE's layout."""

import numpy as np
import pytest

from deepmim.models.pos_embed import sincos_pos_embed


def _mae_sincos_numpy(dim, grid):
    """MAE's get_2d_sincos_pos_embed, written out independently."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    emb = np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


@pytest.mark.parametrize("dim,grid", [(32, 4), (768, 14), (512, 7)])
def test_sincos_matches_mae_layout(dim, grid):
    ours = sincos_pos_embed(dim, grid)[0].double().numpy()
    np.testing.assert_allclose(ours, _mae_sincos_numpy(dim, grid), atol=1e-6)
