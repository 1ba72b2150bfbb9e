"""torch.distributed settings: train.dist_timeout reaches the process group and ends the others when
a rank freezes."""

import os

import pytest
import torch

from deepmim.config.schema import TrainConfig
from deepmim.tasks.pretrain import run_pretrain
from tests.helpers.runs import tiny_pretrain_config

FROZEN_RANK = """
import os, sys, time, torch
from deepmim.training.distributed import all_reduce_sum, setup_distributed
from deepmim.cli.errors import collective_timeout_message, is_collective_timeout
device, rank, world_size = setup_distributed(torch.device("cpu"), timeout=2.0)
if rank == 1:
    os.kill(os.getpid(), __import__("signal").SIGSTOP)  # frozen, as by kill -STOP
start = time.perf_counter()
try:
    all_reduce_sum(torch.ones(1))
except RuntimeError as err:
    print(round(time.perf_counter() - start), is_collective_timeout(err), collective_timeout_message(err), flush=True)
    os._exit(2)
"""


@pytest.mark.slow
def test_a_frozen_rank_ends_the_others_after_train_dist_timeout(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FROZEN_RANK],
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        out, err = procs[0].communicate(timeout=60)
        seconds, timed_out, message = out.split(" ", 2)
        assert procs[0].returncode == 2 and timed_out == "True" and int(seconds) <= 5
        assert message.startswith("this process waited longer than train.dist_timeout") and "Timed out" in message
    finally:
        procs[1].kill()
        procs[1].wait()


def test_train_dist_timeout_reaches_the_process_group(tmp_path, monkeypatch):
    import deepmim.tasks.base as base
    from deepmim.training import distributed

    seen = []
    real = base.setup_distributed
    monkeypatch.setattr(base, "setup_distributed", lambda device, timeout=None: seen.append(timeout) or real(device))
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=1, dist_timeout=42.0))
    assert seen == [42.0]
    distributed.init_distributed(torch.device("cpu"), 42.0)
    assert distributed._TIMEOUT.total_seconds() == 42.0
    assert TrainConfig().dist_timeout == distributed.DEFAULT_TIMEOUT == 600.0
