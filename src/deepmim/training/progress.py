"""What the console shows of a training run, written by rank 0 only.

On a terminal: tqdm's live bar (loss, lr, images/s, ETA). Anywhere else (a SLURM `.out`, `nohup`,
CI, `> run.log`), redraws would pile up as one enormous line, so instead a whole line is written
every `every_s` seconds and/or every `every_steps` steps (checked at the logging steps, where the
numbers are known), e.g.

    step 1200/18720 (6.4%) | epoch 2/40 | loss 1.4523 (block3 0.3641 block6 0.3598) | lr 1.20e-03 | 1432 img/s | ETA 1:02:11
"""
from __future__ import annotations

import sys
import time
from typing import Dict, Optional, TextIO

STYLES = ("auto", "bar", "lines")


def resolve_style(style: str, stream: TextIO) -> str:
    """auto -> bar on a terminal, lines otherwise."""
    if style not in STYLES:
        raise ValueError(f"train.progress_style must be one of {', '.join(STYLES)}, got {style!r}")
    if style != "auto":
        return style
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def format_duration(seconds: float) -> str:
    """3725 -> '1:02:05'; 2 days and more -> '2d 03:14:10'."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}" if days else clock


def _head_losses(values: Dict[str, float]) -> str:
    """'loss_block6' -> 'block6 0.4123'; any other 'loss_*' key keeps its name after 'loss_'."""
    parts = [f"{key[len('loss_'):]} {value:.4f}" for key, value in values.items()
             if key.startswith("loss_") and isinstance(value, (int, float))]
    return f" ({' '.join(parts)})" if parts else ""


def format_line(step: int, total: int, epoch: int, epochs: int, values: Dict[str, float],
                eta_s: Optional[float]) -> str:
    """One self-contained progress line (see the module docstring)."""
    parts = [f"step {step}/{total} ({100.0 * step / max(total, 1):.1f}%)", f"epoch {epoch + 1}/{epochs}"]
    if "loss" in values:
        parts.append(f"loss {values['loss']:.4f}{_head_losses(values)}")
    if "lr" in values:
        parts.append(f"lr {values['lr']:.2e}")
    if "img_per_s" in values:
        parts.append(f"{values['img_per_s']:.0f} img/s")
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    return " | ".join(parts)


class Progress:
    """The bar or the lines for steps `initial`..`stop_at` of a run of `total` steps."""

    def __init__(self, total: int, initial: int, stop_at: int, steps_per_epoch: int, enabled: bool = True,
                 style: str = "auto", every_s: float = 30.0, every_steps: int = 0, stream: TextIO = None):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.stop_at, self.steps_per_epoch = total, stop_at, steps_per_epoch
        self.enabled = enabled
        self.style = resolve_style(style, self.stream) if enabled else "off"
        self.every_s, self.every_steps = every_s, every_steps
        self.start_step, self.start_time = initial, time.perf_counter()
        self.last_line_step: Optional[int] = None
        self.last_line_time = self.start_time
        self.bar = None
        if self.style == "bar":
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=self.stream,
                            smoothing=0.1)

    def update(self, n: int = 1) -> None:
        """After each optimizer step."""
        if self.bar is not None:
            self.bar.update(n)

    def show(self, step: int, epoch: int, values: Dict[str, float]) -> None:
        """At a logging step: the bar's numbers, or a line when one is due."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}", lr=f"{values.get('lr', 0):.2e}",
                                 img_s=f"{values.get('img_per_s', 0):.1f}", refresh=False)
        elif self.style == "lines" and self.due(step):
            self.write_line(step, epoch, values)

    def due(self, step: int) -> bool:
        if self.last_line_step is None or step >= self.stop_at:
            return True
        by_time = self.every_s > 0 and time.perf_counter() - self.last_line_time >= self.every_s
        by_steps = self.every_steps > 0 and step - self.last_line_step >= self.every_steps
        return by_time or by_steps

    def write_line(self, step: int, epoch: int, values: Dict[str, float]) -> None:
        now = time.perf_counter()
        done = step - self.start_step
        eta = (self.stop_at - step) * (now - self.start_time) / done if done > 0 else None
        epochs = -(-self.total // max(self.steps_per_epoch, 1))
        self.stream.write(format_line(step, self.total, epoch, epochs, values, eta) + "\n")
        self.stream.flush()
        self.last_line_step, self.last_line_time = step, now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

