"""How many torch threads and DataLoader workers a process gets, so that they never oversubscribe the cores.

torch's OpenMP threads wait for each other at every parallel region: when one of them has no core (because
loader workers or another process hold it) the whole step stalls. PERFORMANCE.md and benchmarks/README.md
measured 10-40x slow-downs from that on 2 cores. The rule here: the cores this process may use (its CPU
affinity and cgroup quota, divided among the torchrun processes of this machine) are split as
workers + torch threads <= cores, with at least one torch thread; the main process runs the torch threads.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Iterator, Optional


@dataclass(frozen=True)
class ThreadPlan:
    cores: int  # cores available to this process
    torch_threads: int
    workers: int  # DataLoader workers (0: data loaded in the main process, between steps)
    requested_workers: int
    previous_threads: Optional[int] = None  # torch's thread count before apply_thread_plan
    fixed_workers: bool = False  # the worker count defines the data stream (shards dealt to readers): kept

    def restore(self) -> None:
        """Give torch back the thread count it had (a run inside a longer process: tests, notebooks)."""
        if self.previous_threads is not None:
            import torch

            torch.set_num_threads(self.previous_threads)

    def describe(self) -> str:
        clamp = "" if self.workers == self.requested_workers else \
            f" (data.num_workers={self.requested_workers} lowered to fit)"
        if self.fixed_workers and self.workers >= self.cores:
            clamp = " (kept: streamed shards are dealt to that many readers, which fixes the data order)"
        return (f"threads: {self.cores} core(s) for this process -> {self.torch_threads} torch thread(s) + "
                f"{self.workers} loader worker(s){clamp}")


def _cgroup_cpu_limit() -> Optional[float]:
    """CPUs allowed by a cgroup v2 quota (containers), or None when unlimited / unknown."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def available_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup quota, shared equally with
    the other torchrun processes on this machine (LOCAL_WORLD_SIZE)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores // local)


def plan_threads(requested_workers: int, cores: Optional[int] = None, fixed_workers: bool = False) -> ThreadPlan:
    """workers = min(requested, cores - 1); torch threads = cores - workers (>= 1).

    On a GPU the torch threads only launch kernels and run the optimizer's host side, but they still
    compete with the workers for the cores, so the same split applies. fixed_workers: the requested
    workers are kept (streamed shards are dealt to that many readers, so the count decides the data
    order and exact resume on another machine); the torch threads get what is left, at least one."""
    if requested_workers < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {requested_workers}")
    cores = available_cores() if cores is None else max(1, int(cores))
    workers = requested_workers if fixed_workers else min(requested_workers, cores - 1)
    return ThreadPlan(cores, max(1, cores - workers), workers, requested_workers, fixed_workers=fixed_workers)


def apply_thread_plan(requested_workers: int, cores: Optional[int] = None, fixed_workers: bool = False
                      ) -> ThreadPlan:
    """Choose the plan and set torch's intra-op threads to it (OMP_NUM_THREADS, when set, caps the
    threads: the user or a job scheduler asked for that many); `plan.restore()` undoes it."""
    import torch

    plan = plan_threads(requested_workers, cores, fixed_workers)
    threads = plan.torch_threads
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and 1 <= int(env) < threads:
        threads = int(env)
    plan = ThreadPlan(plan.cores, threads, plan.workers, plan.requested_workers, torch.get_num_threads(),
                      plan.fixed_workers)
    torch.set_num_threads(plan.torch_threads)
    return plan


@contextlib.contextmanager
def planned_threads(requested_workers: int, cores: Optional[int] = None, fixed_workers: bool = False
                    ) -> Iterator[ThreadPlan]:
    """apply_thread_plan for the duration of a run, then torch's previous thread count again."""
    plan = apply_thread_plan(requested_workers, cores, fixed_workers)
    try:
        yield plan
    finally:
        plan.restore()
