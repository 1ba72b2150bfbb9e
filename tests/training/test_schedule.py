"""Learning-rate schedules: warm-up then half cosine, and mmcv's poly with linear warm-up."""

import pytest

from deepmim.training.schedule import warmup_cosine_lr, warmup_poly_lr


def test_poly_schedule_with_linear_warmup_matches_mmcv():
    lr = lambda s: warmup_poly_lr(
        s, total_steps=100, warmup_steps=10, peak_lr=1.0, min_lr=0.0, power=1.0, warmup_ratio=1e-6
    )
    assert lr(0) == pytest.approx(1e-6)
    assert lr(5) == pytest.approx(0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert lr(10) == pytest.approx(0.9) and lr(50) == pytest.approx(0.5) and lr(100) == 0.0


def test_schedule_warmup_then_half_cosine():
    lr = lambda s: warmup_cosine_lr(s, total_steps=100, warmup_steps=10, peak_lr=1.0, min_lr=0.1)
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.5)
    assert lr(10) == pytest.approx(1.0)
    assert lr(55) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lr(100) == pytest.approx(0.1)
    values = [lr(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
