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
        clamp = (
            ""
            if self.workers == self.requested_workers
            else f" (data.num_workers={self.requested_workers} lowered to fit)"
        )
        if self.fixed_workers and self.workers >= self.cores:
            clamp = " (kept: streamed shards are dealt to that many readers, which fixes the data order)"
        return (
            f"threads: {self.cores} core(s) for this process -> {self.torch_threads} torch thread(s) + "
            f"{self.workers} loader worker(s){clamp}"
        )


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


def apply_thread_plan(requested_workers: int, cores: Optional[int] = None, fixed_workers: bool = False) -> ThreadPlan:
    """Choose the plan and set torch's intra-op threads to it (OMP_NUM_THREADS, when set, caps the
    threads: the user or a job scheduler asked for that many); `plan.restore()` undoes it."""
    import torch

    plan = plan_threads(requested_workers, cores, fixed_workers)
    threads = plan.torch_threads
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and 1 <= int(env) < threads:
        threads = int(env)
    plan = ThreadPlan(
        plan.cores, threads, plan.workers, plan.requested_workers, torch.get_num_threads(), plan.fixed_workers
    )
    torch.set_num_threads(plan.torch_threads)
    return plan


@contextlib.contextmanager
def planned_threads(
    requested_workers: int, cores: Optional[int] = None, fixed_workers: bool = False
) -> Iterator[ThreadPlan]:
    """apply_thread_plan for the duration of a run, then torch's previous thread count again."""
    plan = apply_thread_plan(requested_workers, cores, fixed_workers)
    try:
        yield plan
    finally:
        plan.restore()


# ----------------------------------------------------------------------------- cores shared with other processes
#
# The plan above counts the cores a process may use, not the ones other processes keep busy. Beside a busy
# process, a torch thread that shares a core gets part of it, and every OpenMP parallel region waits for
# that slowest thread (its peers spin at the barrier meanwhile, taking CPU time the others need): a run
# beside one busy loop on 2 cores then does less than a single thread would. `ThreadAdapter`
# (train.adapt_threads=true) looks, at logging steps, at how much of this process's cores other processes
# used since the last look, and runs on the cores they leave: torch threads = planned threads minus
# the cores others keep busy (rounded, at least one), back up when they go.


def _process_cpu_ticks(pid: str) -> int:
    """utime + stime of one process (all its threads), in clock ticks; 0 when it is gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def _own_cpu_ticks() -> int:
    """CPU ticks of this process and its children (DataLoader workers)."""
    ticks = _process_cpu_ticks("self")
    try:
        for task in os.listdir("/proc/self/task"):
            for child in open(f"/proc/self/task/{task}/children").read().split():
                ticks += _process_cpu_ticks(child)
    except OSError:
        pass
    return ticks


def _busy_ticks(cpus) -> Optional[int]:
    """Busy ticks (all but idle and iowait) summed over `cpus`, from /proc/stat; None where unreadable."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in rest.split()]
            busy += sum(values) - values[3] - (values[4] if len(values) > 4 else 0)
    return busy


class ThreadAdapter:
    """Torch threads that follow the cores other processes leave free (see the note above)."""

    def __init__(self, max_threads: int, min_seconds: float = 5.0, cpus=None):
        """`min_seconds`: the shortest time between two looks; `cpus`: the cores watched (default: this
        process's affinity)."""
        import time

        self.max_threads, self.min_seconds, self.clock = max(1, max_threads), min_seconds, time.monotonic
        if cpus is None:
            try:
                cpus = os.sched_getaffinity(0)
            except AttributeError:
                cpus = range(os.cpu_count() or 1)
        self.cpus = set(cpus)
        self.ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self.sample()

    def sample(self):
        return self.clock(), _busy_ticks(self.cpus), _own_cpu_ticks()

    def others_cores(self) -> Optional[float]:
        """Cores of this process's set that other processes kept busy since the last call (None: too soon
        or unknown). Too soon is decided on the clock alone: /proc is read at most every `min_seconds`."""
        if self.clock() - self.last[0] < self.min_seconds:
            return None
        now = self.sample()
        (t0, busy0, own0), (t1, busy1, own1) = self.last, now
        if busy0 is None or busy1 is None or t1 - t0 < self.min_seconds:
            return None
        self.last = now
        others = ((busy1 - busy0) - (own1 - own0)) / self.ticks_per_second / (t1 - t0)
        return max(0.0, others)

    def threads_for(self, others: float) -> int:
        return max(1, min(self.max_threads, int(math.floor(len(self.cpus) - others + 0.5))))

    def adjust(self) -> Optional[str]:
        """Set torch's threads for the current load; a line saying so when the count changed."""
        import torch

        others = self.others_cores()
        if others is None:
            return None
        threads, current = self.threads_for(others), torch.get_num_threads()
        if threads == current:
            return None
        torch.set_num_threads(threads)
        return (
            f"threads: {current} -> {threads} torch thread(s): other processes keep {others:.1f} of this "
            f"process's {len(self.cpus)} core(s) busy (train.adapt_threads)"
        )
