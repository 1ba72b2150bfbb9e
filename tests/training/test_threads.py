"""Threads and workers: plans within the cores, and ThreadAdapter running torch on the cores others leave."""

import os
import subprocess
import sys
import time

import pytest
import torch

from deepmim.config.schema import DataConfig
from deepmim.tasks.pretrain import run_pretrain
from deepmim.training.threads import ThreadAdapter, apply_thread_plan, plan_threads, planned_threads
from tests.helpers.runs import tiny_pretrain_config


@pytest.mark.parametrize("cores", [1, 2, 3, 8])
@pytest.mark.parametrize("workers", [0, 1, 2, 10])
def test_thread_plan_never_exceeds_the_cores(cores, workers):
    plan = plan_threads(workers, cores=cores)
    assert plan.torch_threads >= 1
    assert plan.torch_threads + plan.workers <= cores
    assert plan.workers == min(workers, cores - 1)
    assert plan.torch_threads == cores - plan.workers  # no core left idle
    assert f"{plan.torch_threads} torch thread" in plan.describe()


def test_streamed_shards_keep_their_reader_count():
    """A wds stream is dealt to data.num_workers readers, which fixes its order and epoch length: the plan keeps
    that count (and says why) and gives torch what is left, at least one thread."""
    plan = plan_threads(2, cores=2, fixed_workers=True)
    assert (plan.workers, plan.torch_threads) == (2, 1) and "kept" in plan.describe()
    assert plan_threads(1, cores=4, fixed_workers=True).torch_threads == 3


def test_thread_plan_divides_the_cores_among_local_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    plan = plan_threads(1)
    assert plan.cores == 2 and (plan.torch_threads, plan.workers) == (1, 1)


def test_apply_thread_plan_respects_omp_num_threads_and_restores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    try:
        plan = apply_thread_plan(0, cores=4)
        assert plan.torch_threads == 1 and torch.get_num_threads() == 1
        plan.restore()
        assert torch.get_num_threads() == 2
        with planned_threads(0, cores=4) as plan:
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_skeleton_gives_loaders_the_planned_workers():
    from deepmim.training.env import Env

    data = DataConfig(num_workers=4)
    env = Env(torch.device("cpu"), "fp32", loader_workers=1)
    assert env.data(data).num_workers == 1 and data.num_workers == 4  # the config itself is left alone
    assert Env(torch.device("cpu"), "fp32").data(data) is data


def adapter_on(cpus, max_threads):
    return ThreadAdapter(max_threads, min_seconds=0.0, cpus=cpus)


def test_threads_follow_the_cores_others_leave():
    adapter = adapter_on({0, 1}, max_threads=2)
    assert [adapter.threads_for(x) for x in (0.0, 0.4, 0.6, 1.0, 1.7, 2.0)] == [2, 2, 1, 1, 1, 1]
    wide = adapter_on(range(8), max_threads=6)
    assert [wide.threads_for(x) for x in (0.0, 2.0, 3.4, 7.9)] == [6, 6, 5, 1]


def test_others_are_the_busy_time_of_the_cores_minus_this_process(monkeypatch):
    adapter = adapter_on({0, 1}, max_threads=2)
    adapter.ticks_per_second = 100
    samples = iter([(10.0, 1000, 500), (12.0, 1000 + 360, 500 + 160)])  # 3.6 s busy in 2 s, 1.6 s of them ours
    monkeypatch.setattr(adapter, "sample", lambda: next(samples))
    adapter.last = adapter.sample()
    assert adapter.others_cores() == pytest.approx(1.0)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        adapter.last = (0.0, 0, 0)
        monkeypatch.setattr(adapter, "sample", lambda: (4.0, 800, 400))  # others 1.0 core again
        assert adapter.adjust() == (
            "threads: 2 -> 1 torch thread(s): other processes keep 1.0 of this process's "
            "2 core(s) busy (train.adapt_threads)"
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_a_busy_loop_on_the_core_is_seen_as_others(tmp_path):
    """Another process (not a child: children, the loader workers, count as this process) spinning on a core."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    ready = tmp_path / "ready"
    code = f"import os; os.sched_setaffinity(0, {{{cpu}}}); open({str(ready)!r}, 'w').close()\nwhile True: pass"
    pid = int(
        subprocess.run(
            ["sh", "-c", f'{sys.executable} -c "{code}" >/dev/null 2>&1 & echo $!'],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    try:
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.01)
        adapter = ThreadAdapter(1, min_seconds=0.5, cpus={cpu})
        time.sleep(1.0)
        others = adapter.others_cores()
    finally:
        os.kill(pid, 9)
    assert others is not None and others > 0.8  # the loop (and whatever else runs there), never this process


def test_a_run_with_adapt_threads_changes_threads_at_logging_steps_and_restores_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ThreadAdapter, "others_cores", lambda self: float(len(self.cpus)))  # every core taken
    previous = torch.get_num_threads()
    result = run_pretrain(tiny_pretrain_config(tmp_path / "run", epochs=1, adapt_threads=True))
    assert result.finished and torch.get_num_threads() == previous
    err = capsys.readouterr().err
    planned = int(err.split(" torch thread(s)")[0].rsplit(" ", 1)[1])  # the start-up line's plan
    if planned > 1:
        assert f"threads: {planned} -> 1 torch thread(s)" in err
    else:
        assert "(train.adapt_threads)" not in err  # one thread already: nothing to change


def test_adapt_threads_is_on_by_default_and_false_keeps_the_planned_count(tmp_path, monkeypatch, capsys):
    from deepmim.config.schema import TrainConfig

    assert TrainConfig().adapt_threads is True
    adapters = []  # every ThreadAdapter a run builds, whatever the number of cores here
    build = ThreadAdapter.__init__
    monkeypatch.setattr(ThreadAdapter, "__init__", lambda self, *a, **k: adapters.append(self) or build(self, *a, **k))
    monkeypatch.setattr(ThreadAdapter, "others_cores", lambda self: float(len(self.cpus)))  # every core taken
    for adapt in (False, True):
        result = run_pretrain(tiny_pretrain_config(tmp_path / f"adapt-{adapt}", epochs=1, adapt_threads=adapt))
        assert result.finished
        assert len(adapters) == int(adapt)  # false: no adapter at all, so the count is never re-planned
        if not adapt:
            assert "(train.adapt_threads)" not in capsys.readouterr().err
