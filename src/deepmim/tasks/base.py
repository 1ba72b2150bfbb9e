"""The skeleton every training task runs, written once: a template (`run_training`) whose steps a
`TrainingTask` (pretrain, finetune, segment) fills in with its methods (data, model, loss, evaluation
hooks), around the one Trainer of training/loop.py:

    check the config -> distributed set-up -> device and precision -> seed -> data -> model ->
    threads -> strategy (DDP / FSDP, activation checkpointing, compile) -> output folder -> Trainer -> run -> cleanup

One template and one loop rather than a self-contained script per task, so that what every run must
get right lives in one place: exact resume (RNG states, the loader's position, the epoch's partial
sums) and the divergence guard that writes only checked states.

`session(device)` is its set-up and cleanup alone, for jobs without the Trainer (linprobe) or without
training (segment eval). Nothing is written before the config has been checked and the data and the
model have been built; `prepare_output_dir` is the one place that writes first:
it takes the output folder for this run (an exclusive lock, no fresh run over another run's
checkpoints, train.overwrite=true moving old files aside: tasks/run_folder.py) and `run_training`
lets go of it at the end. `check_config` is every check on values alone; the `load_*_config`
functions run it too, so --print-config refuses what the run would. `load_trained` reads back what a
training task wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..checkpoint import CheckpointError, Hook, load_strict, read_checkpoint, task_kind
from ..config.loader import ConfigError, dump_yaml, from_dict, to_dict
from ..training.compile import should_compile
from ..training.console import say
from ..training.distributed import all_reduce_sum, cleanup, is_rank_zero, resolve_device, setup_distributed
from ..training.env import Env
from ..training.host_memory import reuse_freed_host_memory
from ..training.loop import LossFn, TaskSpec, TrainData, Trainer, TrainHooks, TrainModel, TrainResult, requested_resume
from ..training.parallel import STRATEGIES, prepare_model
from ..training.precision import resolve_precision
from ..training.signals import parse_signal
from ..training.threads import planned_threads
from .run_folder import OutputDirError, RunLock, check_output_dir, check_writable, claim_output_dir

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@contextlib.contextmanager
def session(device: str, precision: Optional[str] = None, timeout: Optional[float] = None) -> Iterator[Env]:
    """Set up this process (its device under torchrun, the process group) and tear it down on the
    way out, errors included. `precision` (auto | fp32 | bf16 | fp16) is resolved for the device;
    `timeout` (train.dist_timeout): seconds a collective waits for the other processes."""
    dev, rank, world_size = setup_distributed(resolve_device(device), timeout)
    try:
        yield Env(dev, resolve_precision(precision, dev) if precision else "fp32", rank, world_size)
    finally:
        cleanup()


class TrainingTask:
    """A training job for the skeleton: the config (with `train` and `optim` sections) and the steps
    that differ between tasks. The defaults are what most tasks want; `run_training` calls them in
    the skeleton's order, keeping the task's data, model and so on on `self` between steps."""

    kind = ""  # the checkpoint's task: pretrain | finetune | segment (a deepmim.checkpoint.TaskKind)
    title = ""  # for messages: "fine-tuning"
    strategies: Tuple[str, ...] = ("ddp",)  # the train.strategy values the task supports

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def validate(self, require_paths: bool = True) -> None:
        """Checks on the config alone (before anything is set up or built). `require_paths=False` (what
        --print-config runs): leave out the paths a recipe leaves for the command line (data.path, ...)."""

    def build_data(self, env: Env):
        """The training loader (an EpochLoader, see training/loop.py)."""
        raise NotImplementedError

    def build_model(self, env: Env) -> nn.Module:
        """The model to train, on env.device."""
        raise NotImplementedError

    def loss(self) -> LossFn:
        raise NotImplementedError

    def check_loss(self) -> LossFn:
        """The loss the guard checks a run's final weights on: `loss()` without side effects."""
        return self.loss()

    def hooks(self, model: nn.Module, env: Env) -> Optional[TrainHooks]:
        return None

    def param_groups(self, model: nn.Module) -> Optional[List[Dict[str, Any]]]:
        return None

    def find_unused_parameters(self, model: nn.Module) -> bool:
        """Whether DDP must look for parameters no loss reaches."""
        return False

    def train_config(self):
        return self.cfg.train

    def optim_config(self):
        return self.cfg.optim

    def architecture(self) -> Optional[Dict[str, Any]]:
        """What the checkpoints record besides the config to rebuild the model (deepmim.checkpoint)."""
        return None

    def describe(self, model: nn.Module, loader, env: Env) -> str:
        """The start-up line rank 0 prints."""
        return f"deepmim {self.kind}: device {env.device}, precision {env.precision}, {env.world_size} process(es)"

    def finish(self, result: TrainResult, model: nn.Module, env: Env) -> Any:
        """After training, still inside the session; what run_training returns."""
        return result


def check_strategy(task: TrainingTask) -> None:
    strategy = task.cfg.train.strategy
    if strategy not in STRATEGIES:
        raise ConfigError(f"train.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy not in task.strategies:
        raise ConfigError(
            f"{task.title} supports train.strategy={' or '.join(task.strategies)} (with "
            f"train.activation_checkpointing=true for large models); fsdp is available for pretrain"
        )


def check_values(train, optim) -> None:
    """The ranges every training task shares (values a run would only refuse after writing, or deep
    inside torch): the first problem found, naming its key."""
    at_least = {
        "batch_size": 1,
        "accum_steps": 1,
        "epochs": 1,
        "log_every_steps": 1,
        "save_every_steps": 0,
        "save_every_epochs": 0,
    }
    for key, low in at_least.items():
        if getattr(train, key) < low:
            raise ConfigError(f"train.{key} must be at least {low}, got {getattr(train, key)}")
    for key in ("progress_seconds", "progress_steps", "online_probe_val_images"):
        if getattr(train, key, 0) < 0:
            raise ConfigError(f"train.{key} must be 0 or more, got {getattr(train, key)}")
    if hasattr(train, "online_probe_lr") and not train.online_probe_lr > 0:
        raise ConfigError(f"train.online_probe_lr must be a positive learning rate, got {train.online_probe_lr}")
    if not 0 <= train.seed < 2**63:
        raise ConfigError(f"train.seed must be a whole number in [0, 2**63), got {train.seed}")
    if not train.output_dir.strip():
        raise ConfigError(
            "train.output_dir is empty (the run would write into the current folder); set it to the "
            "run's folder, e.g. train.output_dir=runs/my-run"
        )
    if train.max_steps is not None and train.max_steps < 1:
        raise ConfigError(f"train.max_steps must be at least 1 (or null: the whole schedule), got {train.max_steps}")
    if train.precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {train.precision!r}")
    try:
        torch.device(train.device) if train.device != "auto" else None
    except (RuntimeError, ValueError):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {train.device!r}") from None
    if not train.dist_timeout > 0:
        raise ConfigError(f"train.dist_timeout must be a positive number of seconds, got {train.dist_timeout}")
    if train.divergence_factor is not None and not train.divergence_factor > 1:
        raise ConfigError(f"train.divergence_factor must be above 1 (or null: off), got {train.divergence_factor}")
    if getattr(train, "save_signal", None):
        try:
            parse_signal(train.save_signal)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if train.overwrite and train.resume:
        raise ConfigError(
            f"train.overwrite=true starts afresh and train.resume={train.resume} continues a run: choose one"
        )
    lr_key, lr = ("optim.lr", optim.lr) if optim.lr is not None else ("optim.base_lr", optim.base_lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"{lr_key} must be a positive learning rate, got {lr}")
    for key in ("min_lr", "weight_decay", "warmup_epochs"):
        value = getattr(optim, key)
        if not value >= 0:
            raise ConfigError(f"optim.{key} must be 0 or more, got {value}")
    if optim.clip_grad is not None and not optim.clip_grad > 0:
        raise ConfigError(f"optim.clip_grad must be positive (or null: no clipping), got {optim.clip_grad}")
    if len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {optim.betas}")
    decay = getattr(optim, "layer_decay", None)
    if decay is not None and not 0 < decay <= 1:
        raise ConfigError(f"optim.layer_decay must be in (0, 1], got {decay}")


def check_config(task: TrainingTask, require_paths: bool = True) -> None:
    """Every check on the config's values, before anything is set up, built or written: the task's own
    (`validate`), the strategy, the shared ranges. The load_*_config run it too, without requiring the
    paths still to be given, so --print-config refuses what the run would."""
    if require_paths:
        task.validate()  # what a run checks (subclasses may define validate(self) alone)
    else:
        task.validate(require_paths=False)
    check_strategy(task)
    check_values(task.train_config(), task.optim_config())


def check_precision(task: TrainingTask, env: Env) -> None:
    if task.cfg.train.strategy == "fsdp" and env.precision == "fp16":
        raise ConfigError(
            "train.strategy=fsdp with fp16 is not supported (the loss scaler is not shard-aware); "
            "use train.precision=bf16 or fp32, or train.strategy=ddp"
        )


def prepare_output_dir(
    task: TrainingTask, model: nn.Module, loader, env: Env, before_config: Optional[Callable[[], Any]] = None
) -> Optional[RunLock]:
    """The first write of a run (rank 0): the output folder taken for this run (its lock; no fresh run on
    another run's checkpoints; train.overwrite=true moves those aside; stale temp files removed),
    config.yaml, the start-up line. `before_config` runs under the lock before config.yaml is written
    (run_training: loading the checkpoint to resume, so one that cannot continue leaves the folder as
    it was). Returns the lock, which run_training releases at the end. Under torchrun every process
    learns whether rank 0 succeeded, so none waits for a partner that failed."""
    train = task.cfg.train
    out = Path(train.output_dir)
    lock, error = None, None
    if env.is_main:
        try:
            check_writable(out)
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise OutputDirError(
                    f"cannot create train.output_dir '{out}': {err.strerror}; set "
                    f"train.output_dir to a folder you can write in"
                ) from err
            lock = RunLock.acquire(out)
            for note in claim_output_dir(out, requested_resume(train), train.overwrite):
                say(note)
        except BaseException as err:  # noqa: BLE001 - re-raised below, after the other processes know
            error = err
    _agree(error, env, f"rank 0 could not take train.output_dir '{out}' (its message says why)")
    try:
        if before_config is not None:
            before_config()
        if env.is_main:
            write_run_file(out / "config.yaml", dump_yaml(task.cfg))
            say(task.describe(model, loader, env))
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def write_run_file(path: Path, text: str) -> None:
    """`text` into `path`; a write the disk refuses (full) raises an OSError that names the file."""
    try:
        path.write_text(text)
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err


def _agree(error: Optional[BaseException], env: Env, others_message: str) -> None:
    """Under torchrun: every process learns whether rank 0 failed (and stops too); then re-raise its error."""
    if env.world_size > 1:
        failed = all_reduce_sum(torch.tensor([float(error is not None)], device=env.device)).item()
        if failed and error is None:
            raise OutputDirError(others_message)
    if error is not None:
        raise error


def run_training(task: TrainingTask) -> Any:
    """The skeleton: config checks, set-up, data, model, strategy, output folder, Trainer, run, cleanup."""
    check_config(task)
    train = task.cfg.train
    check_output_dir(
        Path(train.output_dir),
        requested_resume(train),
        train.overwrite,  # before anything is built
        check_lock=is_rank_zero(),
    )
    streamed = getattr(task.cfg.data, "name", None) == "wds"  # its worker count deals the shards: kept
    with (
        session(train.device, train.precision, train.dist_timeout) as env,
        planned_threads(task.cfg.data.num_workers, fixed_workers=streamed) as threads,
        contextlib.ExitStack() as stack,
    ):
        check_precision(task, env)  # threads: workers + torch threads <= cores, restored at the end
        env = dataclasses.replace(env, loader_workers=threads.workers)
        host_memory = reuse_freed_host_memory(train.reuse_host_memory)  # before loader workers fork
        torch.manual_seed(train.seed)
        loader = task.build_data(env)
        model = task.build_model(env)
        hooks = task.hooks(model, env)
        groups = task.param_groups(model)
        schedule = task.train_config()  # compile=auto: by the schedule's length (the same on resume)
        compiled = should_compile(
            train.compile, schedule.epochs * (len(loader) // schedule.accum_steps), env.device.type, env.precision
        )
        model, forward_model = prepare_model(
            model,
            env.device,
            train.strategy,
            train.activation_checkpointing,
            compiled,
            find_unused_parameters=task.find_unused_parameters(model),
        )
        spec = TaskSpec(
            kind=task.kind,
            compute_loss=task.loss(),
            train=task.train_config(),
            optim=task.optim_config(),
            config=to_dict(task.cfg),
            architecture=task.architecture(),
            check_loss=task.check_loss(),
            hooks=hooks,
        )
        data = TrainData(loader, batch_size_of=lambda b: b.images.shape[0])
        trainer = Trainer(TrainModel(model, forward_model, groups), data, spec, env)
        lock = prepare_output_dir(task, model, loader, env, before_config=trainer.resume)
        if lock is not None:
            stack.callback(lock.release)
        if env.is_main:
            say(f"{threads.describe()}; torch.compile {'on' if compiled else 'off'}; {host_memory}")
        return task.finish(trainer.fit(), model, env)


def task_hook(hook: Hook) -> Optional[Callable[..., Any]]:
    """A hook of a task kind's record (deepmim.checkpoint.TaskKind) as a callable: given as one, or imported
    here from its "package.module:function" path (tasks/ may import every floor such a path names)."""
    if hook is None or callable(hook):
        return hook
    module, _, name = hook.partition(":")
    return getattr(importlib.import_module(module), name)


def load_trained(path, task: str, why: str = "") -> Tuple[nn.Module, Any, Dict[str, Any]]:
    """A checkpoint a training task wrote (a path, or a Checkpoint read already) -> (its model with the
    weights, in eval mode; the run's config; the architecture it recorded). The record of its kind gives
    the config class and `build_model(config, architecture)`, which makes the model the weights load into."""
    ckpt = read_checkpoint(path)
    ckpt.require(task, why)
    kind = task_kind(task)
    build = task_hook(kind.build_model)
    if build is None:
        raise CheckpointError(f"{ckpt.name} is {ckpt.kind}: its kind records no model to rebuild from the file")
    cfg = from_dict(kind.config_class, ckpt.config)
    arch = ckpt.architecture
    model = build(cfg, arch)
    load_strict(model, ckpt.model_state, context=f"{ckpt.name} does not fit the model its config describes")
    return model.eval(), cfg, arch
