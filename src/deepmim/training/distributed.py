"""torch.distributed set-up under torchrun; a single process needs none of it.

Every training command calls `setup_distributed` first and `wrap_ddp` on its model; evaluation
code shards its data with `shard_indices` and sums its counts with `all_reduce_sum`, so numbers
are the same on 1 or N processes and no sample is counted twice.
"""

from __future__ import annotations

import datetime
import os
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when there is a GPU, else the CPU; or a torch device name (cpu, cuda, cuda:N)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from ..config.loader import ConfigError

        raise ConfigError(f"train.device={name} but CUDA is not available; use train.device=cpu")
    return device


DEFAULT_TIMEOUT = 600.0  # seconds a collective waits for the other processes (train.dist_timeout)
_TIMEOUT = datetime.timedelta(seconds=DEFAULT_TIMEOUT)


def init_distributed(device: torch.device, timeout: Optional[float] = None) -> Tuple[int, int]:
    """(rank, world_size). Initialises the process group when launched by torchrun; a collective that
    waits more than `timeout` seconds for another process (one frozen, or hung) raises instead of
    waiting forever (NCCL's watchdog ends the process)."""
    global _TIMEOUT
    _TIMEOUT = datetime.timedelta(seconds=timeout or DEFAULT_TIMEOUT)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    if not dist.is_initialized():
        # The rendezvous store can outlive a worker group that torchrun restarts (--max-restarts): keys
        # of the previous attempt (e.g. gloo's peer addresses) would send the new processes to dead
        # ports. A prefix per attempt keeps every attempt's keys apart. The attempt is counted in the
        # store itself (every process adds one), not read from TORCHELASTIC_RESTART_COUNT: a node that
        # replaces a lost one starts its count at 0 while the others are at 1.
        store, rank, world_size = next(dist.rendezvous("env://"))
        attempt = (store.add("deepmim/processes", 1) - 1) // world_size
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            store=dist.PrefixStore(f"deepmim/attempt{attempt}", store),
            rank=rank,
            world_size=world_size,
            timeout=_TIMEOUT,
        )
    return dist.get_rank(), dist.get_world_size()


def local_cuda_device(device: torch.device) -> torch.device:
    """Under torchrun each process on a node takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


def setup_distributed(device: torch.device, timeout: Optional[float] = None) -> Tuple[torch.device, int, int]:
    """(device for this process, rank, world_size): the one call a task makes before building its model.
    `timeout`: train.dist_timeout, seconds (None: DEFAULT_TIMEOUT)."""
    device = local_cuda_device(device)
    rank, world_size = init_distributed(device, timeout)
    return device, rank, world_size


def is_rank_zero() -> bool:
    """True in the first process (or the only one): the one that prints and writes. Read from
    torchrun's RANK, so it holds before the process group is set up and after it is torn down."""
    return int(os.environ.get("RANK", "0")) == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> Optional[nn.Module]:
    """DistributedDataParallel around `model` when running on several processes, else None."""
    if not is_distributed():
        return None
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def shard_indices(n: int, rank: int, world_size: int) -> List[int]:
    """Contiguous, disjoint shards of range(n) covering every index once (evaluation: no padding,
    no duplicates, so summed counts equal the single-process ones)."""
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return list(range(start, start + per + (rank < extra)))


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of `value` over processes (a copy; the input is left as is). Identity on one process."""
    if is_distributed():
        value = value.clone()
        dist.all_reduce(value)
    return value


_HOST_GROUP: Optional[object] = None


def host_group():
    """A gloo group over every process, for agreements on host numbers that must not wait for the device
    (the default group when it is gloo already; made once, collectively, under NCCL)."""
    global _HOST_GROUP
    if dist.get_backend() == "gloo":
        return None
    if _HOST_GROUP is None:
        _HOST_GROUP = dist.new_group(backend="gloo", timeout=_TIMEOUT)
    return _HOST_GROUP


def agree_on_max(value: int) -> int:
    """The largest of every process's `value` (e.g. a stop signal's number, 0 for none); `value` itself
    on one process. A host-side all-reduce: no device sync, so it can run at every step."""
    if not is_distributed():
        return value
    number = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(number, op=dist.ReduceOp.MAX, group=host_group())
    return int(number.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    global _HOST_GROUP
    _HOST_GROUP = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
