"""Linear CKA: known answers, independence and the matrix's symmetry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepmim.analysis.cka import cka_matrix, linear_cka


def cka_gram(x: np.ndarray, y: np.ndarray) -> float:
    """CKA from centred Gram matrices (HSIC form), independent of the feature-space formula under test."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def test_cka_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 20, generator=g) @ torch.randn(20, 20, generator=g)  # correlated columns
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-10)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    assert linear_cka(x, x.double() @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, 7.5 * x + 3.0) == pytest.approx(1.0, abs=1e-9)  # isotropic scaling (and a shift)
    y = torch.randn(300, 12, generator=g)
    c = linear_cka(x, y)
    assert linear_cka(x.double() @ q * 0.01, y * 40) == pytest.approx(c, abs=1e-9)
    assert c == pytest.approx(cka_gram(x.double().numpy(), y.double().numpy()), abs=1e-9)
    # anisotropic scaling is NOT an invariance: CKA changes
    assert abs(linear_cka(x, x * torch.linspace(0.1, 10, 20)) - 1.0) > 1e-3


def test_cka_of_independent_features_is_small():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3000, 16, generator=g), torch.randn(3000, 16, generator=g)
    assert linear_cka(x, y) < 0.03  # about sqrt(p q) / n = 0.005
    z = x[:, :8] @ torch.randn(8, 8, generator=g)  # shares half of x's dimensions
    assert 0.2 < linear_cka(x, z) < 0.9


def test_cka_matrix_symmetric_with_unit_diagonal():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(200, 8, generator=g)
    feats = {1: base, 2: base + 0.5 * torch.randn(200, 8, generator=g), 3: torch.randn(200, 8, generator=g)}
    m = np.array(cka_matrix(feats, feats))
    assert np.allclose(np.diag(m), 1) and np.allclose(m, m.T)
    assert m[0, 1] > m[0, 2]
    with pytest.raises(ValueError, match="same n"):
        linear_cka(torch.randn(5, 2), torch.randn(6, 2))
