"""The values a training config implies but does not state, computed in one place: the effective batch,
the peak lr (MAE's scaling rule), the schedule's length and warm-up in optimizer steps, and the image
size the model is trained at. The Trainer runs on them, the start-up summary prints them, and
`--print-config` shows the ones known before the data is read, so all three always agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from .optim import scaled_lr


@dataclass(frozen=True)
class Derived:
    """What a run's train + optim sections come to on `world_size` processes (steps: optimizer steps)."""

    effective_batch: int  # images per optimizer step, all processes and accumulation steps together
    peak_lr: float
    img_size: Optional[int]  # the size images are resized / cropped to for training (None: not known)
    steps_per_epoch: Optional[int] = None  # None until the data's length is known
    total_steps: Optional[int] = None
    warmup_steps: Optional[float] = None

    @property
    def warmup_longer_than_run(self) -> bool:
        return self.total_steps is not None and self.warmup_steps is not None and self.warmup_steps > self.total_steps

    def lines(self) -> List[str]:
        """Human-readable lines (the comments --print-config appends to the YAML)."""
        out = [f"effective batch {self.effective_batch}, peak lr {self.peak_lr:.3g}"]
        if self.img_size is not None:
            out.append(f"image size trained {self.img_size}px")
        if self.total_steps is not None:
            out.append(
                f"{self.steps_per_epoch} steps per epoch, {self.total_steps} steps, warm-up {self.warmup_steps:g} steps"
            )
        return out


def derive(
    train, optim, world_size: int = 1, steps_per_epoch: Optional[int] = None, img_size: Optional[int] = None
) -> Derived:
    """The derived values of a TrainConfig (epochs, batch_size, accum_steps) and OptimConfig (base_lr / lr,
    warmup_epochs) on `world_size` processes, with `steps_per_epoch` optimizer steps once the data is known."""
    effective = train.batch_size * train.accum_steps * world_size
    peak = scaled_lr(optim, effective)
    if steps_per_epoch is None:
        return Derived(effective, peak, img_size)
    return Derived(
        effective,
        peak,
        img_size,
        steps_per_epoch,
        train.epochs * steps_per_epoch,
        optim.warmup_epochs * steps_per_epoch,
    )
