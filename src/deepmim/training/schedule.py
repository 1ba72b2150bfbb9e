"""MAE's learning-rate schedule, per optimizer step: linear warm-up, then half-cycle cosine."""
from __future__ import annotations

import math


def warmup_cosine_lr(step: float, total_steps: float, warmup_steps: float, peak_lr: float, min_lr: float = 0.0
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
