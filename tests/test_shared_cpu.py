"""Cores shared with other processes: ThreadAdapter (train.adapt_threads=true) measures how much of this
process's cores others keep busy and runs torch on what they leave; benchmarks/shared_cpu.py measures it
against a fixed thread count (its smoke run here checks the script, not the speed: timings need a quiet machine)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepmim.tasks.pretrain import run_pretrain
from deepmim.training.threads import ThreadAdapter
from tests.test_training import tiny_pretrain_config

ROOT = Path(__file__).resolve().parents[1]


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
        assert adapter.adjust() == ("threads: 2 -> 1 torch thread(s): other processes keep 1.0 of this process's "
                                    "2 core(s) busy (train.adapt_threads)")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_a_busy_loop_on_the_core_is_seen_as_others(tmp_path):
    """Another process (not a child: children, the loader workers, count as this process) spinning on a core."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    ready = tmp_path / "ready"
    code = f"import os; os.sched_setaffinity(0, {{{cpu}}}); open({str(ready)!r}, 'w').close()\nwhile True: pass"
    pid = int(subprocess.run(["sh", "-c", f'{sys.executable} -c "{code}" >/dev/null 2>&1 & echo $!'],
                             capture_output=True, text=True, check=True).stdout)
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


@pytest.mark.slow
def test_benchmark_smoke_runs_every_neighbourhood(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shared_cpu.py"), "--smoke", "--steps", "4",
                           "--log-every", "2", "--warmup", "1", "--settings", "fixed", "adapt",
                           "--neighbours", "alone", "second deepmim run", "--", "data.num_samples=256",
                           "model.encoder.depth=2",
                           "model.heads=[{block: 2, decoder_dim: 64, decoder_depth: 1, decoder_heads: 2}]"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = done.stdout.strip().splitlines()[1:]
    assert len(rows) == 4
    assert all("%" in row for row in rows)  # every case gave images/s and a share of alone
    assert sum(" + " in row for row in rows) == 2  # the two side-by-side runs are both timed


def test_adapt_threads_is_on_by_default_and_false_keeps_the_planned_count(tmp_path, monkeypatch, capsys):
    from deepmim.config.schema import TrainConfig

    assert TrainConfig().adapt_threads is True
    monkeypatch.setattr(ThreadAdapter, "others_cores", lambda self: float(len(self.cpus)))  # every core taken
    result = run_pretrain(tiny_pretrain_config(tmp_path / "run", epochs=1, adapt_threads=False))
    assert result.finished
    assert "(train.adapt_threads)" not in capsys.readouterr().err  # never re-planned, however busy the cores
