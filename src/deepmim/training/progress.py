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
    parts = [
        f"{key[len('loss_') :]} {value:.4f}"
        for key, value in values.items()
        if key.startswith("loss_") and isinstance(value, (int, float))
    ]
    return f" ({' '.join(parts)})" if parts else ""


def format_line(
    step: int, total: int, epoch: int, epochs: int, values: Dict[str, float], eta_s: Optional[float]
) -> str:
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

    def __init__(
        self,
        total: int,
        initial: int,
        stop_at: int,
        steps_per_epoch: int,
        enabled: bool = True,
        style: str = "auto",
        every_s: float = 30.0,
        every_steps: int = 0,
        stream: TextIO = None,
    ):
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

            self.bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, file=self.stream, smoothing=0.1
            )

    def update(self, n: int = 1) -> None:
        """After each optimizer step."""
        if self.bar is not None:
            self.bar.update(n)

    def show(self, step: int, epoch: int, values: Dict[str, float]) -> None:
        """At a logging step: the bar's numbers, or a line when one is due."""
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{values.get('loss', float('nan')):.4f}",
                lr=f"{values.get('lr', 0):.2e}",
                img_s=f"{values.get('img_per_s', 0):.1f}",
                refresh=False,
            )
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


def checkpoint_label(path) -> str:
    """A checkpoint as a bar names it: its run folder and file name ('pre/checkpoint-last.pt'), so two runs'
    checkpoint-last.pt are told apart."""
    from pathlib import Path

    p = Path(str(path))
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


class LineBar:
    """What a bar becomes where the output is not a terminal: whole lines, `desc: 120/400 (30.0%) | 41.2/s |
    ETA 0:00:07`, at most one every `every_s` seconds, and a last one when it closes. Iterate through it
    (`for x in LineBar(loader, ...)`) or call update(n); disabled, it writes nothing."""

    def __init__(
        self,
        iterable=None,
        total: Optional[int] = None,
        desc: str = "",
        enabled: bool = True,
        stream: TextIO = None,
        every_s: float = 30.0,
    ):
        self.iterable, self.desc, self.enabled, self.every_s = iterable, desc, enabled, every_s
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n = total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.start = self.last = time.perf_counter()
        self.written_n: Optional[int] = None

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.enabled and self.every_s > 0 and time.perf_counter() - self.last >= self.every_s:
            self.write()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        parts = [
            f"{self.desc}: {self.n}"
            + (f"/{self.total} ({100.0 * self.n / max(self.total, 1):.1f}%)" if self.total else ""),
            f"{rate:.1f}/s",
        ]
        if self.total and 0 < self.n < self.total and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        elif self.total and self.n >= self.total:
            parts.append(f"done in {format_duration(elapsed)}")
        return " | ".join(parts)

    def write(self) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.last, self.written_n = time.perf_counter(), self.n

    def close(self) -> None:
        if self.enabled and self.n and self.written_n != self.n:
            self.write()
        self.enabled = False


def task_bar(
    iterable=None,
    total: Optional[int] = None,
    desc: str = "",
    enabled: bool = True,
    style: str = "auto",
    stream: TextIO = None,
    every_s: float = 30.0,
):
    """The console rule for every command's progress (feature extraction, probes, attention, ...): tqdm's
    bar on a terminal, whole lines (LineBar) anywhere else, nothing when disabled; never control codes
    in a file."""
    stream = stream if stream is not None else sys.stderr
    if enabled and resolve_style(style, stream) == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, file=stream, dynamic_ncols=True)
    return LineBar(iterable, total, desc, enabled, stream, every_s)
