"""The skeleton every task runs, written once (as torchtune's recipes):

    check the config -> distributed set-up -> device and precision -> seed -> data -> model ->
    threads -> strategy (DDP / FSDP, activation checkpointing, compile) -> output folder -> Trainer -> run -> cleanup

`run_training(task)` runs it for a `TrainingTask` (pretrain, finetune, segment), which fills in the
steps that differ. `session(device)` is its set-up and cleanup alone, for jobs without the Trainer
(linprobe) or without training (segment eval). Nothing is written before the config has been checked
and the data and the model have been built; `prepare_output_dir` is the one place that writes first,
so checks on the output folder belong there. `load_trained` reads back what a training task wrote.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Type, TypeVar

import torch
from torch import nn

from ..checkpoint import load_strict, read_checkpoint
from ..config.loader import ConfigError, dump_yaml, from_dict, to_dict
from ..config.schema import EncoderConfig
from ..training.distributed import cleanup, resolve_device, setup_distributed
from ..training.logging import say
from ..training.loop import LossFn, TrainHooks, Trainer, TrainResult
from ..training.compile import should_compile
from ..training.parallel import STRATEGIES, prepare_model
from ..training.precision import resolve_precision
from ..training.threads import planned_threads

C = TypeVar("C")


@dataclass(frozen=True)
class Env:
    """Where this process runs: its device and precision, its rank among world_size processes."""

    device: torch.device
    precision: str
    rank: int = 0
    world_size: int = 1
    loader_workers: Optional[int] = None  # DataLoader workers the thread plan allows (None: as configured)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def data(self, cfg: C) -> C:
        """A task's data config with the workers the thread plan allows (training/threads.py)."""
        if self.loader_workers is None or self.loader_workers == cfg.num_workers:
            return cfg
        return dataclasses.replace(cfg, num_workers=self.loader_workers)


@contextlib.contextmanager
def session(device: str, precision: Optional[str] = None) -> Iterator[Env]:
    """Set up this process (its device under torchrun, the process group) and tear it down on the
    way out, errors included. `precision` (auto | fp32 | bf16 | fp16) is resolved for the device."""
    dev, rank, world_size = setup_distributed(resolve_device(device))
    try:
        yield Env(dev, resolve_precision(precision, dev) if precision else "fp32", rank, world_size)
    finally:
        cleanup()


class TrainingTask:
    """A training job for the skeleton: the config (with `train` and `optim` sections) and the steps
    that differ between tasks. The defaults are what most tasks want; `run_training` calls them in
    the skeleton's order, keeping the task's data, model and so on on `self` between steps."""

    kind = ""  # the checkpoint's task: pretrain | finetune | segment (deepmim.checkpoint.TASKS)
    title = ""  # for messages: "fine-tuning"
    strategies: Tuple[str, ...] = ("ddp",)  # the train.strategy values the task supports

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def validate(self) -> None:
        """Checks on the config alone (before anything is set up or built)."""

    def build_data(self, env: Env):
        """The training loader (an EpochLoader, see training/loop.py)."""
        raise NotImplementedError

    def build_model(self, env: Env) -> nn.Module:
        """The model to train, on env.device."""
        raise NotImplementedError

    def loss(self) -> LossFn:
        raise NotImplementedError

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
        raise ConfigError(f"{task.title} supports train.strategy={' or '.join(task.strategies)} (with "
                          f"train.activation_checkpointing=true for large models); fsdp is available for pretrain")


def check_precision(task: TrainingTask, env: Env) -> None:
    if task.cfg.train.strategy == "fsdp" and env.precision == "fp16":
        raise ConfigError("train.strategy=fsdp with fp16 is not supported (the loss scaler is not shard-aware); "
                          "use train.precision=bf16 or fp32, or train.strategy=ddp")


def prepare_output_dir(task: TrainingTask, model: nn.Module, loader, env: Env) -> Path:
    """The first write of a run (rank 0): the output folder, config.yaml, the start-up line."""
    out = Path(task.cfg.train.output_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_yaml(task.cfg))
        say(task.describe(model, loader, env))
    return out


def run_training(task: TrainingTask) -> Any:
    """The skeleton: config checks, set-up, data, model, strategy, output folder, Trainer, run, cleanup."""
    task.validate()
    check_strategy(task)
    train = task.cfg.train
    with session(train.device, train.precision) as env, planned_threads(task.cfg.data.num_workers) as threads:
        check_precision(task, env)  # threads: workers + torch threads <= cores, restored at the end
        env = dataclasses.replace(env, loader_workers=threads.workers)
        torch.manual_seed(train.seed)
        loader = task.build_data(env)
        model = task.build_model(env)
        hooks = task.hooks(model, env)
        groups = task.param_groups(model)
        schedule = task.train_config()  # compile=auto: by the schedule's length (the same on resume)
        compiled = should_compile(train.compile, schedule.epochs * (len(loader) // schedule.accum_steps),
                                  env.device.type)
        model, forward_model = prepare_model(model, env.device, train.strategy, train.activation_checkpointing,
                                             compiled, find_unused_parameters=task.find_unused_parameters(model))
        prepare_output_dir(task, model, loader, env)
        if env.is_main:
            say(f"{threads.describe()}; torch.compile {'on' if compiled else 'off'}")
        trainer = Trainer(model, loader, task.loss(), task.train_config(), task.optim_config(), to_dict(task.cfg),
                          env.device, env.precision, env.rank, env.world_size,
                          batch_size_of=lambda b: b.images.shape[0], forward_model=forward_model,
                          param_groups=groups, hooks=hooks, task=task.kind, architecture=task.architecture())
        return task.finish(trainer.fit(), model, env)


def load_trained(path, task: str, config_cls: Type[C], build: Callable[[C, Dict[str, Any], EncoderConfig], nn.Module],
                 why: str = "") -> Tuple[nn.Module, C, Dict[str, Any]]:
    """A checkpoint a training task wrote -> (its model with the weights, in eval mode; the run's
    config; the architecture it recorded). `build(cfg, architecture, encoder config)` makes the model."""
    ckpt = read_checkpoint(path)
    ckpt.require(task, why)
    cfg = from_dict(config_cls, ckpt.config)
    arch = ckpt.architecture
    model = build(cfg, arch, from_dict(EncoderConfig, arch["encoder"]))
    load_strict(model, ckpt.model_state, context=f"'{path}' does not fit the model its config describes")
    return model.eval(), cfg, arch
