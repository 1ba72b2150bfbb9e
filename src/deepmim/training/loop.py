"""The one training loop every task shares: AMP, accumulation, clipping, schedule,
atomic checkpoints with exact resume, logs (training/loggers.py) and progress (a bar or lines).

Randomness is derived from (seed, rank, step) rather than carried in global RNG state,
so a run killed at any moment and resumed from its last checkpoint ends with the same
weights as one that never stopped.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

import torch
from torch import nn

from ..config.schema import OptimConfig, TrainConfig
from .distributed import all_reduce_sum, barrier, is_distributed
from .parallel import full_state_dict, is_sharded, load_full_state_dict
from ..checkpoint import LAST, find_resume_checkpoint, make_checkpoint, read_checkpoint, save_checkpoint
from .checkpoint import rng_state, set_rng_state
from .loggers import build_trackers, resolve_loggers
from .logging import MetricsLogger, say
from .optim import build_adamw, scaled_lr
from .precision import autocast
from .progress import Progress
from .schedule import lr_at_step, set_lr

LossFn = Callable[[nn.Module, Any, torch.Generator], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good one."""


class EpochLoader(Protocol):
    """An iterable of batches that can be positioned at (epoch, first batch) for exact resume."""

    def __len__(self) -> int: ...
    def __iter__(self): ...
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...


class TrainHooks:
    """Task-specific additions to the loop (evaluation, EMA): override what you need."""

    def after_optimizer_step(self, trainer: "Trainer") -> None:
        pass

    def after_epoch(self, trainer: "Trainer", epoch: int) -> Dict[str, float]:
        """Runs on every rank after each full epoch; returned numbers are logged as 'eval' rows."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


@dataclass
class TrainResult:
    step: int
    epoch: int
    finished: bool  # False when stopped early by train.max_steps
    last_metrics: Dict[str, float]
    checkpoint: Optional[Path]


class Trainer:
    """Runs `compute_loss` over `loader` for cfg.epochs with MAE's optimizer and schedule."""

    def __init__(self, model: nn.Module, loader: EpochLoader, compute_loss: LossFn, train: TrainConfig,
                 optim: OptimConfig, config_dict: Dict[str, Any], device: torch.device, precision: str,
                 rank: int = 0, world_size: int = 1, batch_size_of: Callable[[Any], int] = lambda b: len(b[0]),
                 forward_model: Optional[nn.Module] = None, param_groups: Optional[list] = None,
                 hooks: Optional[TrainHooks] = None, task: str = "pretrain",
                 architecture: Optional[Dict[str, Any]] = None):
        """`model` is what is optimised and saved; `forward_model` (default: model) what the step calls,
        e.g. its DDP wrapper or compiled form (training.parallel.prepare_model). `task` and
        `architecture` are recorded in every checkpoint (see deepmim.checkpoint)."""
        self.model, self.loader, self.compute_loss = model, loader, compute_loss
        self.forward_model = forward_model if forward_model is not None else model
        self.train_cfg, self.optim_cfg, self.config_dict = train, optim, config_dict
        self.task, self.architecture = task, architecture
        self.device, self.precision, self.rank, self.world_size = device, precision, rank, world_size
        self.batch_size_of = batch_size_of
        self.output_dir = Path(train.output_dir)
        self.steps_per_epoch = len(loader) // train.accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(f"an epoch has {len(loader)} batches, fewer than train.accum_steps={train.accum_steps}: "
                             f"use more data, a smaller train.batch_size or fewer accumulation steps")
        self.total_steps = train.epochs * self.steps_per_epoch
        self.warmup_steps = optim.warmup_epochs * self.steps_per_epoch
        effective_batch = train.batch_size * train.accum_steps * world_size
        self.peak_lr = scaled_lr(optim, effective_batch)
        self.optimizer = build_adamw(model, optim, self.peak_lr, device, groups=param_groups)
        self.hooks = hooks or TrainHooks()
        self.last_eval: Dict[str, float] = {}
        self.scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
        self.step = 0
        self.is_main = rank == 0
        self.skipped_images = 0

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> Dict[str, Any]:
        """Everything to resume; model and optimizer gathered in full (parameter names as keys), so a
        checkpoint loads on any number of processes, with DDP, FSDP or none. Collective under FSDP."""
        model_state, optimizer_state = full_state_dict(self.model, self.optimizer)
        return make_checkpoint(self.task, model_state, self.config_dict, self.architecture,
                               optimizer=optimizer_state, scaler=self.scaler.state_dict(), step=self.step,
                               epoch=self.step // self.steps_per_epoch, steps_per_epoch=self.steps_per_epoch,
                               rng=rng_state(), hooks=self.hooks.state_dict())

    def save(self, numbered_epoch: Optional[int] = None) -> Optional[Path]:
        """Rank 0 writes (atomically); under FSDP every rank takes part in gathering the state."""
        sharded = is_sharded(self.model)
        if not self.is_main and not sharded:
            return None
        state = self.state_dict()
        if not self.is_main:
            return None
        return save_checkpoint(state, self.output_dir, numbered_epoch)

    def maybe_resume(self) -> Optional[Path]:
        """Load train.resume; a worker group restarted by torchrun (--max-restarts) resumes from the
        newest checkpoint in output_dir even when the command did not ask to."""
        resume = self.train_cfg.resume
        if resume is None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
            resume = "auto"
        path = find_resume_checkpoint(self.output_dir, resume)
        if path is None:
            return None
        ckpt = read_checkpoint(path)
        ckpt.require(self.task, "train.resume continues a run of the same task")
        state = ckpt.raw
        if state.get("steps_per_epoch") != self.steps_per_epoch:
            raise ValueError(f"{path} was written with {state.get('steps_per_epoch')} steps per epoch, this run has "
                             f"{self.steps_per_epoch}: resume with the same data, batch size and accumulation")
        load_full_state_dict(self.model, self.optimizer, ckpt.model_state, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.hooks.load_state_dict(state.get("hooks", {}))
        self.step = state["step"]
        return path

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        resumed = self.maybe_resume()
        if resumed and self.is_main:
            say(f"resumed from {resumed} at step {self.step} (epoch {self.step // self.steps_per_epoch})")
        resume_step = self.step if resumed else None
        t = self.train_cfg
        trackers = lambda: build_trackers(resolve_loggers(t.loggers, t.tensorboard), self.output_dir, t,  # noqa: E731
                                          self.config_dict, resume_step)
        logger = MetricsLogger(self.output_dir, enabled=self.is_main, resume_step=resume_step, trackers=trackers)
        stop_at = self.total_steps if self.train_cfg.max_steps is None else min(self.total_steps,
                                                                                 self.train_cfg.max_steps)
        bar = Progress(self.total_steps, self.step, stop_at, self.steps_per_epoch, t.progress and self.is_main,
                       t.progress_style, t.progress_seconds, t.progress_steps)
        last_metrics: Dict[str, float] = {}
        checkpoint = None
        try:
            while self.step < stop_at:
                epoch = self.step // self.steps_per_epoch
                last_metrics = self.run_epoch(epoch, stop_at, logger, bar)
                epoch_done = self.step % self.steps_per_epoch == 0
                keep = self.train_cfg.save_every_epochs
                numbered = epoch if epoch_done and keep and ((epoch + 1) % keep == 0 or self.step == self.total_steps) \
                    else None
                checkpoint = self.save(numbered_epoch=numbered)
        finally:
            bar.close()
            logger.close()
        barrier()  # no process leaves (and tears down the group) while rank 0 still writes
        return TrainResult(self.step, self.step // self.steps_per_epoch, self.step >= self.total_steps,
                           last_metrics, checkpoint)

    def run_epoch(self, epoch: int, stop_at: int, logger: MetricsLogger, bar) -> Dict[str, float]:
        """Train from the current step to the end of `epoch` (or stop_at); returns the epoch's mean metrics."""
        accum = self.train_cfg.accum_steps
        first_step = epoch * self.steps_per_epoch
        self.loader.set_epoch(epoch, start_batch=(self.step - first_step) * accum)
        self.model.train()
        window = _Window()
        epoch_sums = _Window()
        micro = (self.step - first_step) * accum
        end_micro = min(self.steps_per_epoch, stop_at - first_step) * accum
        # islice: never fetch a batch past the stop, its augmentation would advance the RNG states.
        for batch in itertools.islice(self.loader, end_micro - micro):
            self.skipped_images += getattr(batch, "num_skipped", 0)
            if self.batch_size_of(batch) > 0:  # a batch whose every file was unreadable has none
                metrics, n_images = self.micro_step(batch, micro, epoch, sync=(micro + 1) % accum == 0)
                window.add(metrics, n_images)
                epoch_sums.add(metrics, n_images)
            micro += 1
            if micro % accum:
                continue
            self.optimizer_step()
            bar.update(1)
            if self.step % self.train_cfg.log_every_steps == 0 or micro == end_micro:
                self.log_window(window, logger, bar, epoch)
                window = _Window()
            if self.train_cfg.save_every_steps and self.step % self.train_cfg.save_every_steps == 0 \
                    and micro < end_micro:
                self.check_finite(epoch_sums, epoch)
                self.save()
        if window.count:
            self.log_window(window, logger, bar, epoch)
        means = self.check_finite(epoch_sums, epoch)
        if self.step % self.steps_per_epoch == 0:
            logger.log("epoch", self.step, {"epoch": epoch, **means, "skipped_images": self.skipped_images})
            evaluation = self.hooks.after_epoch(self, epoch)
            if evaluation:
                self.last_eval = evaluation
                logger.log("eval", self.step, {"epoch": epoch, **evaluation})
                if self.is_main:
                    say(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in evaluation.items()))
            if self.skipped_images and self.is_main:
                say(f"epoch {epoch}: skipped {self.skipped_images} unreadable images (set data.strict=true to stop "
                    f"on the first one)")
            self.skipped_images = 0
        return means

    def micro_step(self, batch: Any, micro: int, epoch: int, sync: bool = True
                   ) -> Tuple[Dict[str, torch.Tensor], int]:
        """Forward + backward of one micro-batch; gradients accumulate until optimizer_step.
        Under DDP, gradients are all-reduced only on the last micro-batch of an accumulation."""
        generator = torch.Generator().manual_seed(step_seed(self.train_cfg.seed, self.rank, epoch, micro))
        n_images = self.batch_size_of(batch)
        no_sync = getattr(self.forward_model, "no_sync", None)
        with (contextlib.nullcontext() if sync or no_sync is None else no_sync()):
            with autocast(self.device, self.precision):
                loss, metrics = self.compute_loss(self.forward_model, batch, generator)
            self.scaler.scale(loss / self.train_cfg.accum_steps).backward()
        return {"loss": loss.detach(), **{k: v.detach() for k, v in metrics.items()}}, n_images

    def optimizer_step(self) -> None:
        lr = lr_at_step(self.optim_cfg, self.step, self.total_steps, self.warmup_steps, self.peak_lr)
        set_lr(self.optimizer, lr)
        if self.optim_cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.clip_grad)
        if any(p.grad is not None for p in self.model.parameters()):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.hooks.after_optimizer_step(self)

    def log_window(self, window: "_Window", logger: MetricsLogger, bar, epoch: int) -> None:
        """The only host-device sync point: turn the window's sums into numbers and log them."""
        means = self.check_finite(window, epoch)
        values = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], **means,
                  "img_per_s": window.global_images / max(window.elapsed(), 1e-9)}
        logger.log("train", self.step, values)
        bar.show(self.step, epoch, values)

    def check_finite(self, window: "_Window", epoch: int) -> Dict[str, float]:
        means = window.means()
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if bad:
            where = self.output_dir / LAST
            kept = f"the last good checkpoint is {where}" if where.exists() else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step} (epoch {epoch}): "
                + ", ".join(f"{k}={v}" for k, v in bad.items())
                + f"; stopped without saving, {kept}. Try a lower optim.base_lr, optim.clip_grad=1.0, "
                  f"more warm-up, or train.precision=fp32.")
        return means


def step_seed(seed: int, rank: int, epoch: int, micro: int) -> int:
    """A distinct, reproducible seed for every micro-step of every process."""
    return ((seed * 1_000_003 + rank) * 1_000_003 + epoch) * 1_000_003 + micro & 0x7FFF_FFFF_FFFF_FFFF


class _Window:
    """Sums of metric tensors over some micro-steps, kept on the device until read."""

    def __init__(self):
        self.sums: Dict[str, torch.Tensor] = {}
        self.count = 0
        self.images = 0
        self.global_images = 0
        self.start = time.perf_counter()

    def add(self, metrics: Dict[str, torch.Tensor], n_images: int) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums[key] + value.float() if key in self.sums else value.float()
        self.count += 1
        self.images += n_images

    def means(self) -> Dict[str, float]:
        """Means over every micro-step of every process. Under torch.distributed this is one
        all-reduce (at logging steps only), so all ranks log, check and act on the same numbers,
        covering the whole global batch. Sets `global_images` (images of all processes)."""
        sums, count, self.global_images = self.sums, self.count, self.images
        if is_distributed() and sums:
            keys = sorted(sums)
            device = sums[keys[0]].device
            packed = all_reduce_sum(torch.stack([sums[k] for k in keys] + [
                torch.tensor(float(count), device=device), torch.tensor(float(self.images), device=device)]))
            sums = {k: packed[i] for i, k in enumerate(keys)}
            count, self.global_images = int(packed[-2].item()), int(packed[-1].item())
        return {k: (v / max(count, 1)).item() for k, v in sums.items()}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
