"""MAE's learning-rate schedule, per optimizer step: linear warm-up, then half-cycle cosine."""

from __future__ import annotations

import math


def warmup_cosine_lr(
    step: float, total_steps: float, warmup_steps: float, peak_lr: float, min_lr: float = 0.0
) -> float:
    """lr at optimizer step `step` (0-based): peak*step/warmup during warm-up, then cosine to min_lr."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1e-12)
    progress = min(progress, 1.0)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def warmup_poly_lr(
    step: float,
    total_steps: float,
    warmup_steps: float,
    peak_lr: float,
    min_lr: float = 0.0,
    power: float = 1.0,
    warmup_ratio: float = 1e-6,
) -> float:
    """mmcv's iteration-based 'poly' policy with linear warm-up (segmentation): the poly lr
    (peak - min) * (1 - step/total)**power + min, scaled during warm-up by a factor rising
    linearly from warmup_ratio to 1."""
    progress = min(step / max(total_steps, 1e-12), 1.0)
    lr = (peak_lr - min_lr) * (1.0 - progress) ** power + min_lr
    if step < warmup_steps:
        lr *= 1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_ratio)
    return lr


def lr_at_step(optim, step: float, total_steps: float, warmup_steps: float, peak_lr: float) -> float:
    """The lr of the schedule named by `optim.schedule` (cosine when the config has no such field)."""
    schedule = getattr(optim, "schedule", "cosine")
    if schedule == "cosine":
        return warmup_cosine_lr(step, total_steps, warmup_steps, peak_lr, optim.min_lr)
    if schedule == "poly":
        return warmup_poly_lr(
            step,
            total_steps,
            warmup_steps,
            peak_lr,
            optim.min_lr,
            getattr(optim, "poly_power", 1.0),
            getattr(optim, "warmup_ratio", 1e-6),
        )
    raise ValueError(f"unknown optim.schedule '{schedule}'; choose cosine or poly")
