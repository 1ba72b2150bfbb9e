"""The one training loop every task shares: AMP, accumulation, clipping, schedule,
atomic checkpoints with exact resume, logs (training/metrics_log.py, training/trackers.py) and
progress (a bar or lines).

Randomness is derived from (seed, rank, step) rather than carried in global RNG state,
so a run killed at any moment and resumed from its last checkpoint ends with the same
weights as one that never stopped; the partial sums of the epoch's metrics ride in the
checkpoint too, so its epoch means are those of the uninterrupted run.

A checkpoint is only written from a state the divergence guard (training/guard.py) has passed:
its weights and gradients are checked when it is taken, and, when training goes on, it is written
once the next step's loss, computed from those very weights, has been checked as well; the last state
of a run is checked on the loss its weights give on the last batch. A run that diverges therefore
stops with its last checkpoint intact, and the message names it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import torch
from torch import nn

from ..checkpoint import (
    LAST,
    PREV,
    SET_ASIDE,
    CheckpointError,
    PickledObjectsError,
    compare_state_dicts,
    find_resume_checkpoint,
    make_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from ..config.loader import flatten
from ..config.schema import OptimConfig, TrainConfig
from .console import say
from .derived import derive
from .distributed import agree_on_max, all_reduce_sum, barrier, is_distributed
from .env import Env
from .guard import DivergenceError, DivergenceGuard
from .metrics_log import MetricsLogger
from .optim import build_adamw
from .parallel import full_state_dict, load_full_state_dict
from .precision import autocast
from .progress import Progress
from .rng_state import rng_state, set_rng_state
from .schedule import lr_at_step, set_lr
from .signals import Stopped, StopSignals, requeue_slurm_job, stop_signals
from .threads import ThreadAdapter
from .trackers import build_trackers, resolve_loggers

LossFn = Callable[[nn.Module, Any, torch.Generator], Tuple[torch.Tensor, Dict[str, torch.Tensor]]]


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
    last_metrics: Dict[str, float]  # the means over the last epoch trained (its steps so far when stopped inside)
    checkpoint: Optional[Path]
    start_step: int = 0  # where this run began (the resumed step): step == start_step means nothing was trained
    last_logged: Dict[str, float] = field(default_factory=dict)  # the last `train` row of metrics.jsonl (this run)


def requested_resume(train: TrainConfig) -> Optional[str]:
    """train.resume, or 'auto' in a worker group that torchrun restarted (--max-restarts) or a SLURM job
    that was requeued (SLURM_RESTART_COUNT): the restarted run continues from the newest checkpoint in
    output_dir even when the command did not ask to."""
    restarts = max(int(os.environ.get(name) or 0) for name in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"))
    if train.resume is None and restarts > 0:
        return "auto"
    return train.resume


def images_in(batch: Any) -> int:
    """The images of a batch whose first item is the image tensor (or list)."""
    return len(batch[0])


@dataclass
class TrainModel:
    """What is trained: `module` is optimised and saved; `forward` (default: module) is what a step calls,
    e.g. its DDP wrapper or compiled form (training.parallel.prepare_model); `param_groups` (default:
    build_adamw's weight-decay groups) the optimizer's groups."""

    module: nn.Module
    forward: Optional[nn.Module] = None
    param_groups: Optional[List[Dict[str, Any]]] = None

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.module


@dataclass(frozen=True)
class TrainData:
    """The batches: a loader that can be positioned for exact resume, and the images in a batch (for
    img/s; a batch whose every file was unreadable has none and is skipped)."""

    loader: EpochLoader
    batch_size_of: Callable[[Any], int] = images_in


@dataclass
class TaskSpec:
    """What a task gives the loop. `kind`, `config` and `architecture` are recorded in every checkpoint
    (see deepmim.checkpoint); `check_loss` (default: compute_loss) is what confirm_final computes, the
    same loss without side effects (an online probe's training step); `hooks` (default: none) add
    evaluation or EMA."""

    kind: str
    train: TrainConfig
    optim: OptimConfig
    compute_loss: LossFn
    check_loss: Optional[LossFn] = None
    hooks: Optional[TrainHooks] = None
    config: Dict[str, Any] = field(default_factory=dict)
    architecture: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        self.check_loss = self.check_loss or self.compute_loss
        self.hooks = self.hooks or TrainHooks()


@dataclass(frozen=True)
class ResumeState:
    """Where a run starts, looked up once: the checkpoint it continues from (None: it starts afresh)
    and the step it continues at."""

    checkpoint: Optional[Path]
    step: int


class Trainer:
    """Runs the task's loss over the data for train.epochs with MAE's optimizer and schedule."""

    def __init__(self, model: TrainModel, data: TrainData, task: TaskSpec, env: Env):
        self.model, self.forward_model = model.module, model.forward
        self.data, self.task, self.env = data, task, env
        train = task.train
        self.output_dir = Path(train.output_dir)
        self.steps_per_epoch = len(data.loader) // train.accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"an epoch has {len(data.loader)} batches, fewer than train.accum_steps="
                f"{train.accum_steps}: use more data, a smaller train.batch_size or fewer accumulation "
                f"steps"
            )
        self.derived = derive(train, task.optim, env.world_size, self.steps_per_epoch)  # one place: training/derived.py
        self.total_steps, self.warmup_steps = self.derived.total_steps, self.derived.warmup_steps
        self.peak_lr = self.derived.peak_lr
        self.optimizer = build_adamw(model.module, task.optim, self.peak_lr, env.device, groups=model.param_groups)
        self.last_eval: Dict[str, float] = {}
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=(env.precision == "fp16"))
        self.step = 0
        self.resume_state: Optional[ResumeState] = None  # set once, by resume()
        self.guard = DivergenceGuard(train.divergence_factor, check_grads=not self.scaler.is_enabled())
        self.pending: Optional[Tuple[Dict[str, Any], Optional[int]]] = None  # (state, numbered epoch) to write
        self.last_good: Optional[Tuple[Path, int]] = None  # (checkpoint, its step): what a stop leaves intact
        self.last_batch: Optional[Tuple[Any, int]] = None  # (the last micro-batch trained on, its epoch)
        self.resumed_from_prev = False  # resumed from checkpoint-prev.pt: the first save must not rotate over it
        self.last_metrics: Dict[str, float] = {}
        self.last_logged: Dict[str, float] = {}
        self.carried: Dict[str, Any] = {}  # partial metric sums of the epoch a resumed checkpoint was taken in
        self.signals: Optional[StopSignals] = None  # set while fit() runs: SIGTERM, SIGINT, train.save_signal
        self.stop_signal = 0  # the signal every process agreed to stop on (0: none)
        adapt = getattr(train, "adapt_threads", False) and env.device.type == "cpu" and env.world_size == 1
        self.thread_adapter = ThreadAdapter(torch.get_num_threads()) if adapt else None

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self, partial: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Everything to resume; model and optimizer gathered in full (parameter names as keys), so a
        checkpoint loads on any number of processes, with DDP, FSDP or none. Collective under FSDP.
        `partial`: the metric sums of the epoch so far (exact epoch means after a mid-epoch resume)."""
        model_state, optimizer_state = full_state_dict(self.model, self.optimizer)
        return make_checkpoint(
            self.task.kind,
            model_state,
            self.task.config,
            self.task.architecture,
            optimizer=optimizer_state,
            scaler=self.scaler.state_dict(),
            step=self.step,
            epoch=self.step // self.steps_per_epoch,
            steps_per_epoch=self.steps_per_epoch,
            rng=rng_state(),
            hooks=self.task.hooks.state_dict(),
            guard=self.guard.state_dict(),
            partial=partial or {},
            metrics=dict(self.last_metrics),
        )

    def save_point(
        self, stop_at: int, numbered_epoch: Optional[int] = None, partial: Optional[Dict[str, Any]] = None
    ) -> None:
        """Keep the current state: checked now (weights, gradients), then held until the next step's loss
        (from these weights) has passed the guard too; when no step follows, written once the loss its
        weights give on the last batch has passed (confirm_final)."""
        self.check_weights()
        state = snapshot(self.state_dict(partial), copy=self.env.device.type == "cpu")
        if self.step >= stop_at:
            self.confirm_final()
            self.write(state, numbered_epoch)
        else:
            self.pending = (state, numbered_epoch)

    def check_next_loss(self, loss: torch.Tensor, where: str) -> None:
        """A loss computed from the weights of a state about to be written: stop if it is not sound."""
        value = (all_reduce_sum(loss.detach().float().reshape(())) / self.env.world_size).item()
        if not math.isfinite(value):
            self.diverged(f"non-finite loss {where}: loss={value}")
        problem = self.guard.check_loss(value)
        if problem:
            self.diverged(f"{problem}, {where}")

    def confirm_pending(self, loss: torch.Tensor, epoch: int) -> None:
        """The first loss computed from a held state's weights: write the state if it is sound."""
        self.check_next_loss(loss, f"at step {self.step + 1} (epoch {epoch + 1})")
        state, numbered = self.pending
        self.pending = None
        self.write(state, numbered)

    def confirm_final(self) -> None:
        """The last state of a run has no next step to vouch for it: the loss its weights give on the last
        micro-batch stands in (a forward pass on the unwrapped model, no backward, with the RNG states and
        the buffers put back after it, so nothing the run saves or continues with changes; grad mode stays
        on, so a compiled model is not compiled again)."""
        if self.last_batch is None:
            return
        batch, epoch = self.last_batch
        self.last_batch = None
        buffers = [b.detach().clone() for b in self.model.buffers()]
        generator = torch.Generator().manual_seed(step_seed(self.task.train.seed, self.env.rank, epoch, -1))
        was_training = self.model.training
        try:
            with (
                torch.random.fork_rng(devices=[self.env.device] if self.env.device.type == "cuda" else []),
                autocast(self.env.device, self.env.precision),
            ):
                loss, _ = self.task.check_loss(self.model, batch, generator)
                loss = loss.detach()
        finally:
            self.model.train(was_training)
            with torch.no_grad():
                for b, saved in zip(self.model.buffers(), buffers):
                    b.copy_(saved)
        self.check_next_loss(loss, f"from the final weights of step {self.step} (epoch {epoch + 1})")

    def write(self, state: Dict[str, Any], numbered_epoch: Optional[int] = None) -> None:
        """Rank 0 writes (atomically; the file it replaces becomes checkpoint-prev.pt)."""
        if self.env.is_main:
            set_aside = self.resumed_from_prev and (self.output_dir / LAST).exists()
            path = save_checkpoint(state, self.output_dir, numbered_epoch, keep_prev=self.resumed_from_prev)
            if set_aside:
                say(
                    f"kept {self.output_dir / PREV}, which this run resumed from; the {LAST} it did not resume "
                    f"from is now {self.output_dir / SET_ASIDE}"
                )
            self.resumed_from_prev = False
        else:
            path = self.output_dir / LAST
        self.last_good = (path, state["step"])

    def maybe_resume(self) -> Optional[Path]:
        """Load train.resume (see requested_resume); every way a checkpoint cannot continue this run
        ends in one message saying which file, why, and what to do."""
        path = find_resume_checkpoint(self.output_dir, requested_resume(self.task.train))
        if path is None:
            return None
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as err:  # damaged, or pickled objects (refused, whatever the resume)
            kind = PickledObjectsError if isinstance(err, PickledObjectsError) else CheckpointError
            raise kind(f"{err}. Cannot resume from it: {self.resume_alternatives(path)}") from err
        ckpt.require(self.task.kind, "train.resume continues a run of the same task")
        state = ckpt.raw
        self.check_architecture(path, ckpt)
        if state.get("steps_per_epoch") != self.steps_per_epoch:
            raise ValueError(
                f"{path} was written with {state.get('steps_per_epoch')} steps per epoch, this run has "
                f"{self.steps_per_epoch}: resume with the same data, batch size and accumulation"
            )
        try:
            load_full_state_dict(self.model, self.optimizer, ckpt.model_state, state["optimizer"])
        except CheckpointError as err:  # e.g. weights of the wrong dtype, or NaN: name the file and the way out
            raise CheckpointError(f"'{path}': {err}. Cannot resume from it: {self.resume_alternatives(path)}") from err
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.task.hooks.load_state_dict(state.get("hooks", {}))
        self.guard.load_state_dict(state.get("guard", {}))
        self.step = state["step"]
        self.carried = state.get("partial") or {}
        self.last_metrics = dict(state.get("metrics") or {})
        self.last_good = (path, self.step)
        self.resumed_from_prev = Path(path).resolve() == (self.output_dir / PREV).resolve()
        return path

    def resume_alternatives(self, path: Path) -> str:
        prev = self.output_dir / PREV
        options = []
        if prev.is_file() and Path(path).resolve() != prev.resolve():
            options.append(f"continue from the checkpoint before it with train.resume={prev}")
        options.append(
            "start afresh with train.overwrite=true (moves the folder's files aside) or in another train.output_dir"
        )
        return "; or ".join(options)

    def check_architecture(self, path: Path, ckpt) -> None:
        """A checkpoint of another model than this run's config builds: one paragraph naming the config
        keys that differ (instead of a wall of shape mismatches)."""
        missing, unexpected, mismatched = compare_state_dicts(self.model.state_dict(), ckpt.model_state)
        if not (missing or unexpected or mismatched):
            return
        first = (
            mismatched or [f"{k} missing in the file" for k in missing] or [f"{k} not in the model" for k in unexpected]
        )[0]
        changed = config_changes(ckpt.config, self.task.config, ckpt.architecture, self.task.architecture)
        raise CheckpointError(
            f"{path} holds another model than this run builds ({len(missing) + len(unexpected) + len(mismatched)} "
            f"tensors differ, e.g. {first}); the config it was written with differs in: {changed}. Resume it with "
            f"its own config ({Path(path).parent / 'config.yaml'}), or train the new model in another "
            f"train.output_dir"
        )

    # ------------------------------------------------------------------ the guard

    def check_weights(self) -> None:
        problem = self.guard.check_weights(self.model.parameters(), self.step)
        if problem:
            self.diverged(problem)

    def diverged(self, problem: str) -> None:
        """Stop: nothing of the diverged state is written; name the checkpoint that is still good."""
        self.pending = None
        if self.last_good is not None:
            path, step = self.last_good
            how = "train.resume=auto" if Path(path).parent == self.output_dir else f"train.resume={path}"
            kept = f"the last good checkpoint is {path} (step {step}); resume from it with {how} after the change"
        else:
            kept = "no checkpoint was written yet"
        raise DivergenceError(
            f"{problem}: training diverged, stopped without saving; {kept}. Try a lower optim.base_lr, "
            f"optim.clip_grad=1.0, more warm-up (optim.warmup_epochs), or train.precision=fp32."
        )

    # ------------------------------------------------------------------ the loop

    def resume(self) -> Optional[Path]:
        """Load the checkpoint train.resume asks for (once; fit() calls it when the caller did not):
        run_training does it before writing config.yaml, so a checkpoint that cannot continue this run
        leaves the folder as it was."""
        if self.resume_state is None:
            checkpoint = self.maybe_resume()
            self.resume_state = ResumeState(checkpoint, self.step)
        return self.resume_state.checkpoint

    def fit(self) -> TrainResult:
        resumed = self.resume()
        start_step = self.resume_state.step
        t = self.task.train
        stop_at = self.total_steps if t.max_steps is None else min(self.total_steps, t.max_steps)
        if resumed and self.step >= stop_at:
            return self.nothing_to_train(resumed, stop_at)
        if resumed and self.env.is_main:
            say(
                f"resumed from {resumed} at step {self.step}: {describe_position(self.step, self.steps_per_epoch, t.epochs)}"
            )
        resume_step = self.step if resumed else None

        def trackers():
            return build_trackers(
                resolve_loggers(t.loggers, t.tensorboard), self.output_dir, t, self.task.config, resume_step
            )

        logger = MetricsLogger(self.output_dir, enabled=self.env.is_main, resume_step=resume_step, trackers=trackers)
        bar = Progress(
            self.total_steps,
            self.step,
            stop_at,
            self.steps_per_epoch,
            t.progress and self.env.is_main,
            t.progress_style,
            t.progress_seconds,
            t.progress_steps,
        )
        self.check_weights()  # the norm the first check compares with
        try:
            with StopSignals(stop_signals(getattr(t, "save_signal", None))) as self.signals:
                while self.step < stop_at:
                    epoch = self.step // self.steps_per_epoch
                    self.last_metrics, partial = self.run_epoch(epoch, stop_at, logger, bar)
                    if self.step < stop_at and self.step // self.steps_per_epoch == epoch and not self.stop_signal:
                        raise ValueError(self.short_epoch_message(epoch))
                    epoch_done = self.step % self.steps_per_epoch == 0
                    keep = t.save_every_epochs
                    numbered = (
                        epoch + 1
                        if epoch_done and keep and ((epoch + 1) % keep == 0 or self.step == self.total_steps)
                        else None
                    )
                    # a stop writes at once (no step follows to vouch for the state: the guard's final check)
                    self.save_point(self.step if self.stop_signal else stop_at, numbered, partial)
                    if self.stop_signal:
                        break
                barrier()  # no process leaves (and tears down the group) while rank 0 still writes
                if getattr(t, "log_artifacts", False) and not self.stop_signal and self.last_good:
                    logger.log_artifacts(self.output_dir, self.last_good[0])
        finally:
            self.pending = None
            self.signals = None
            bar.close()
            logger.close()
        if self.stop_signal and self.step < stop_at:
            self.stopped()
        return TrainResult(
            self.step,
            self.step // self.steps_per_epoch,
            self.step >= self.total_steps,
            self.last_metrics,
            self.last_good[0] if self.last_good else None,
            start_step,
            self.last_logged,
        )

    def stop_requested(self) -> bool:
        """At a step's end: whether any process received a stop signal. Under torch.distributed every
        process takes part (a one-number all-reduce on the host, no device sync), so all stop after the
        same step."""
        received = self.signals.received if self.signals is not None and self.signals.received else 0
        self.stop_signal = agree_on_max(received) if is_distributed() else received
        return bool(self.stop_signal)

    def stopped(self) -> None:
        """After the stop's checkpoint: requeue the SLURM job when asked (rank 0), then leave with Stopped,
        which the command turns into its exit code (training/signals.py)."""
        requeued = requeue_slurm_job(getattr(self.task.train, "requeue", False)) if self.env.is_main else None
        path = self.last_good[0] if self.last_good else None
        raise Stopped(self.stop_signal, self.step, path, requeued)

    def short_epoch_message(self, epoch: int) -> str:
        """The loader ran dry before the epoch's last step (a data set that shrank, a shard index that
        counts more samples than its shards hold): without this stop the loop would start the same epoch
        again and again."""
        done = self.step - epoch * self.steps_per_epoch
        return (
            f"the data ran out after {done} of the {self.steps_per_epoch} steps of epoch {epoch}: the data "
            f"set holds fewer samples than when the run counted them (for WebDataset shards: fewer than their "
            f"index says); rewrite the index or restore the files, then resume with train.resume=auto"
        )

    def nothing_to_train(self, resumed: Path, stop_at: int) -> TrainResult:
        """Resuming a run that is already where this one would stop: say so, train nothing, write nothing."""
        if self.env.is_main:
            if self.step >= self.total_steps:
                why = (
                    f"holds the finished run ({self.step} steps, all {self.task.train.epochs} epochs); to train "
                    f"longer raise train.epochs (the schedule stretches with it), or start a new run"
                )
            else:
                why = f"is at step {self.step}, where train.max_steps={self.task.train.max_steps} stops"
            say(f"nothing to train: {resumed} {why}")
        return TrainResult(
            self.step,
            self.step // self.steps_per_epoch,
            self.step >= self.total_steps,
            self.last_metrics,
            resumed,
            self.step,
        )

    def run_epoch(
        self, epoch: int, stop_at: int, logger: MetricsLogger, bar
    ) -> Tuple[Dict[str, float], Optional[Dict[str, Any]]]:
        """Train from the current step to the end of `epoch` (or stop_at); returns the epoch's mean metrics
        and, when it stopped inside the epoch, its partial sums (for the checkpoint)."""
        accum = self.task.train.accum_steps
        first_step = epoch * self.steps_per_epoch
        self.data.loader.set_epoch(epoch, start_batch=(self.step - first_step) * accum)
        self.model.train()
        carried, self.carried = self.carried, {}
        window = _Window(self.env.device, carried.get("window") if self.env.is_main else None)
        epoch_sums = _Window(self.env.device, carried.get("epoch") if self.env.is_main else None)
        micro = (self.step - first_step) * accum
        end_micro = min(self.steps_per_epoch, stop_at - first_step) * accum
        # islice: never fetch a batch past the stop, its augmentation would advance the RNG states.
        for batch in itertools.islice(self.data.loader, end_micro - micro):
            skipped = getattr(batch, "num_skipped", 0)
            window.skipped += skipped
            epoch_sums.skipped += skipped
            if self.data.batch_size_of(batch) > 0:  # a batch whose every file was unreadable has none
                metrics, n_images = self.micro_step(batch, micro, epoch, sync=(micro + 1) % accum == 0)
                self.last_batch = (batch, epoch)  # what confirm_final checks the run's last weights on
                window.add(metrics, n_images)
                epoch_sums.add(metrics, n_images)
                if self.pending is not None:  # the first loss of the held state's weights
                    self.confirm_pending(metrics["loss"], epoch)
            micro += 1
            if micro % accum:
                continue
            self.optimizer_step()
            bar.update(1)
            if self.step % self.task.train.log_every_steps == 0 or micro == end_micro:
                self.log_window(window, logger, bar, epoch)
                window = _Window(self.env.device)
            if (
                self.task.train.save_every_steps
                and self.step % self.task.train.save_every_steps == 0
                and micro < end_micro
            ):
                self.check_finite(epoch_sums, epoch)
                self.save_point(stop_at, partial={"epoch": epoch_sums.global_state(), "window": window.global_state()})
            if self.stop_requested():  # finish here: fit() writes the checkpoint at once
                break
        if window.count:
            self.log_window(window, logger, bar, epoch)
        means = self.check_finite(epoch_sums, epoch)
        if self.step % self.steps_per_epoch == 0:
            logger.log("epoch", self.step, {"epoch": epoch + 1, **means, "skipped_images": epoch_sums.global_skipped})
            evaluation = self.task.hooks.after_epoch(self, epoch)
            if evaluation:
                self.last_eval = evaluation
                logger.log("eval", self.step, {"epoch": epoch + 1, **evaluation})
                if self.env.is_main:
                    say(
                        f"epoch {epoch + 1}/{self.task.train.epochs}: "
                        + ", ".join(f"{k} {v:.4g}" for k, v in evaluation.items())
                    )
            if epoch_sums.global_skipped and self.env.is_main:
                say(
                    f"epoch {epoch + 1}/{self.task.train.epochs}: {epoch_sums.global_skipped} unreadable images were replaced by other images "
                    f"of the data set, so every batch stayed full (data.strict=true stops at the first instead)"
                )
            return means, None
        return means, {"epoch": epoch_sums.global_state()}  # its last window was logged: nothing to carry

    def micro_step(self, batch: Any, micro: int, epoch: int, sync: bool = True) -> Tuple[Dict[str, torch.Tensor], int]:
        """Forward + backward of one micro-batch; gradients accumulate until optimizer_step.
        Under DDP, gradients are all-reduced only on the last micro-batch of an accumulation."""
        generator = torch.Generator().manual_seed(step_seed(self.task.train.seed, self.env.rank, epoch, micro))
        n_images = self.data.batch_size_of(batch)
        no_sync = getattr(self.forward_model, "no_sync", None)
        with contextlib.nullcontext() if sync or no_sync is None else no_sync():
            with autocast(self.env.device, self.env.precision):
                loss, metrics = self.task.compute_loss(self.forward_model, batch, generator)
            self.scaler.scale(loss / self.task.train.accum_steps).backward()
        return {"loss": loss.detach(), **{k: v.detach() for k, v in metrics.items()}}, n_images

    def optimizer_step(self) -> None:
        lr = lr_at_step(self.task.optim, self.step, self.total_steps, self.warmup_steps, self.peak_lr)
        set_lr(self.optimizer, lr)
        grad_norm = None
        if self.task.optim.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.task.optim.clip_grad)
        self.guard.record_gradients(self.step, self.model.parameters(), grad_norm)
        if any(p.grad is not None for p in self.model.parameters()):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.task.hooks.after_optimizer_step(self)

    def log_window(self, window: "_Window", logger: MetricsLogger, bar, epoch: int) -> None:
        """The only host-device sync point: turn the window's sums into numbers, check them (and the
        weights) with the guard, and log them."""
        means = self.check_finite(window, epoch)
        problem = self.guard.check_loss(means["loss"])
        if problem:
            self.diverged(f"{problem}, in the steps up to step {self.step} (epoch {epoch + 1})")
        self.check_weights()
        self.guard.observe_loss(means["loss"], self.step)
        values = {
            "epoch": epoch + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            **means,
            "img_per_s": window.global_images / max(window.elapsed(), 1e-9),
        }
        logger.log("train", self.step, values)
        self.last_logged = {"step": self.step, **values}
        bar.show(self.step, epoch, values)
        if self.thread_adapter is not None:  # at a sync point: the step's work is done
            change = self.thread_adapter.adjust()
            if change and self.env.is_main:
                say(change)

    def check_finite(self, window: "_Window", epoch: int) -> Dict[str, float]:
        """The window's means; a non-finite one stops the run (the guard's message, every metric named)."""
        means = window.means()
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if bad:
            self.diverged(
                f"non-finite loss at step {self.step} (epoch {epoch + 1}): "
                + ", ".join(f"{k}={v}" for k, v in bad.items())
            )
        return means


def snapshot(obj: Any, copy: bool) -> Any:
    """`obj` with every tensor detached and on the CPU, copied when `copy` (CPU training, where the
    gathered state shares storage with the live weights) or when it lives on an accelerator."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=copy or obj.device.type != "cpu")
    if isinstance(obj, dict):
        return {k: snapshot(v, copy) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v, copy) for v in obj)
    return obj


def config_changes(
    old: Dict[str, Any], new: Dict[str, Any], old_arch: Any = None, new_arch: Any = None, limit: int = 6
) -> str:
    """'model.encoder.embed_dim: 128 -> 64; ...' for the model keys (and the recorded architecture) that
    differ between a checkpoint's config and this run's."""
    a = {**flatten(old.get("model", {}), "model."), **flatten(old_arch or {}, "architecture.")}
    b = {**flatten(new.get("model", {}), "model."), **flatten(new_arch or {}, "architecture.")}
    diffs = [
        f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and k != "model.attn_impl"
    ]
    if not diffs:
        return "no model key (the weights themselves do not fit)"
    return "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def describe_position(step: int, steps_per_epoch: int, epochs: int) -> str:
    """Where `step` optimizer steps stand, in 1-based epochs: '2 of 4 epochs done, epoch 3 next' or
    'in epoch 3 of 4 (step 2 of 5)'."""
    done, into = divmod(step, steps_per_epoch)
    if into == 0:
        return f"{done} of {epochs} epochs done, epoch {done + 1} next"
    return f"in epoch {done + 1} of {epochs} (step {into} of {steps_per_epoch})"


def step_seed(seed: int, rank: int, epoch: int, micro: int) -> int:
    """A distinct, reproducible seed for every micro-step of every process."""
    return ((seed * 1_000_003 + rank) * 1_000_003 + epoch) * 1_000_003 + micro & 0x7FFF_FFFF_FFFF_FFFF


class _Window:
    """Sums of metric tensors over some micro-steps, kept on the device until read. `carried`: the
    global totals a checkpoint recorded (rank 0 starts from them after a resume, the others from zero)."""

    def __init__(self, device: Optional[torch.device] = None, carried: Optional[Dict[str, Any]] = None):
        carried = carried or {}
        self.sums: Dict[str, torch.Tensor] = {
            k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in carried.get("sums", {}).items()
        }
        self.count = int(carried.get("count", 0))  # micro-steps
        self.images = int(carried.get("images", 0))
        self.skipped = int(carried.get("skipped", 0))  # unreadable files replaced
        self.fresh_images = 0  # images since this window (re)started in this process: for img/s
        self.totals: Optional[Dict[str, Any]] = None  # global totals, set by means()
        self.global_images = self.global_skipped = 0
        self.start = time.perf_counter()

    def add(self, metrics: Dict[str, torch.Tensor], n_images: int) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums[key] + value.float() if key in self.sums else value.float()
        self.count += 1
        self.images += n_images
        self.fresh_images += n_images

    def means(self) -> Dict[str, float]:
        """Means over every micro-step of every process. Under torch.distributed this is one
        all-reduce (at logging steps and checkpoints only), so all ranks log, check and act on the
        same numbers, covering the whole global batch. Sets `global_images` (images of all processes
        since the window (re)started) and `global_skipped`."""
        keys = sorted(self.sums)
        sums = {k: self.sums[k] for k in keys}
        counts = [self.count, self.images, self.skipped, self.fresh_images]
        if is_distributed():
            device = sums[keys[0]].device if keys else torch.device("cpu")
            packed = all_reduce_sum(
                torch.stack([sums[k] for k in keys] + [torch.tensor(float(c), device=device) for c in counts])
            )
            sums = {k: packed[i] for i, k in enumerate(keys)}
            counts = [int(v) for v in packed[len(keys) :].tolist()]
        count, images, skipped, fresh = counts
        self.totals = {
            "sums": {k: v.item() for k, v in sums.items()},
            "count": count,
            "images": images,
            "skipped": skipped,
        }
        self.global_images, self.global_skipped = fresh, skipped
        return {k: v / max(count, 1) for k, v in self.totals["sums"].items()}

    def global_state(self) -> Dict[str, Any]:
        """The global totals as plain numbers, for the checkpoint (collective under torch.distributed)."""
        self.means()
        return dict(self.totals)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
