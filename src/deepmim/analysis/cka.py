"""Linear centred kernel alignment (Kornblith et al., 2019), the standard (biased-HSIC) estimator.

CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) for features X (n, p), Y (n, q) of the
same n examples, Xc, Yc column-centred. It is 1 for X against itself, invariant to orthogonal
transforms and isotropic scaling of either side, and in [0, 1]. The biased estimator is not 0 for
independent features: about sqrt(p q) / n for n examples of widths p and q, so compare numbers
computed on the same n.
"""

from __future__ import annotations

from typing import Dict, List

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"CKA needs (n, p) and (n, q) features of the same n examples, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    x = x.double() - x.double().mean(dim=0, keepdim=True)
    y = y.double() - y.double().mean(dim=0, keepdim=True)
    cross = (y.T @ x).pow(2).sum()
    denom = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / denom) if denom > 0 else 0.0


def cka_matrix(a: Dict[int, torch.Tensor], b: Dict[int, torch.Tensor]) -> List[List[float]]:
    """[[CKA(a[i], b[j]) for j in sorted(b)] for i in sorted(a)]: block i of one model (rows) against
    block j of another (columns), or of the same model when a is b."""
    rows = sorted(a)
    cols = sorted(b)
    out = [[0.0] * len(cols) for _ in rows]
    for i, ri in enumerate(rows):
        for j, cj in enumerate(cols):
            if a is b and j < i:
                out[i][j] = out[j][i]
            else:
                out[i][j] = linear_cka(a[ri], b[cj])
    return out
