"""Two nodes over loopback: two `torchrun --nnodes 2 --node_rank {0,1}` groups on 127.0.0.1 meeting at a
c10d rendezvous (gloo). They must end with the weights of one process on the same global batch, and a run
that loses one node (its agent and worker killed, then started again, as a scheduler replaces a node)
under --max-restarts must resume from the last checkpoint and end with the weights of the run that lost none."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_distributed import ENV, TINY, _children, max_difference, train_losses, weights
from tests.test_signals_processes import logged_step

pytestmark = pytest.mark.slow

COMMON = ["train.epochs=10", "train.save_every_steps=2", "train.log_every_steps=2"]  # 80 steps of 8 images
TOTAL = 80


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(node_rank: int, port: int, recipe: Path, out: Path, *overrides: str, max_restarts: int = 0) -> list:
    """One node's launcher: torchrun with a c10d rendezvous on 127.0.0.1, one process per node."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node_rank}",
            "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id=deepmim-{port}", f"--max-restarts={max_restarts}", "--monitor-interval=0.5",
            "-m", "deepmim", "pretrain", "--config", str(recipe), f"train.output_dir={out}", *COMMON, *overrides]


# A replaced node joins a rendezvous round whose rank 0 agent already ran one: with the agents' shared
# TCP store, torch's agents then wait for a master address nobody writes. Without it, every round gets
# its own store (hosted by the round's rank 0 worker).
NODE_ENV = {**ENV, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def start(cmd: list) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=NODE_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(procs, timeout=240) -> list:
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:  # a hang must not outlive the test
                os.killpg(p.pid, signal.SIGKILL)
    return logs


def checkpoint_step(out: Path) -> int:
    try:
        return torch.load(out / "checkpoint-last.pt", weights_only=True)["step"]
    except Exception:  # not written yet, or being replaced
        return -1


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodes")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY)
    port = free_port()
    out = root / "two-nodes"
    first = start(node(0, port, recipe, out, "train.batch_size=4"))
    time.sleep(1.0)  # node 0 hosts the rendezvous store
    second = start(node(1, port, recipe, out, "train.batch_size=4"))
    logs = finish([first, second])
    assert first.returncode == 0 and second.returncode == 0, logs[0][-3000:] + logs[1][-3000:]
    return root, recipe, out


def test_two_nodes_over_loopback_equal_one_process_on_the_same_global_batch(two_nodes):
    root, recipe, out = two_nodes
    single = root / "single"
    done = subprocess.run([sys.executable, "-m", "deepmim", "pretrain", "--config", str(recipe),
                           f"train.output_dir={single}", *COMMON, "train.batch_size=8"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert checkpoint_step(out) == TOTAL
    assert max_difference(weights(single), weights(out)) < 1e-4  # float reduction order only
    one, two = train_losses(single), train_losses(out)
    assert [s for s, _ in one] == [s for s, _ in two] and len(one) == TOTAL // 2
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(one, two))


def test_losing_a_node_restarts_the_group_and_resumes_from_the_last_checkpoint(two_nodes):
    root, recipe, reference = two_nodes
    port = free_port()
    out = root / "lost-node"
    # train.resume=auto on every node: a replacement node's processes start with a restart count of 0
    cmd = lambda rank: node(rank, port, recipe, out, "train.batch_size=4", "train.resume=auto",  # noqa: E731
                            max_restarts=2)
    first = start(cmd(0))
    time.sleep(1.0)
    second = start(cmd(1))
    deadline = time.time() + 240
    while time.time() < deadline and logged_step(out) < 10 and first.poll() is None:
        time.sleep(0.01)
    lost_at = logged_step(out)
    workers = _children(second.pid)  # torchrun starts its workers in sessions of their own
    assert workers, "node 1's worker should be running"
    for pid in [second.pid, *workers]:  # the node is gone: its agent and its worker
        os.kill(pid, signal.SIGKILL)
    second.wait()
    replacement = start(cmd(1))  # the scheduler's new node joins the next rendezvous round
    logs = finish([first, replacement])
    assert first.returncode == 0 and replacement.returncode == 0, logs[0][-3000:] + logs[1][-3000:]
    assert 10 <= lost_at < TOTAL, "the loss must land mid-run"
    found = re.search(r"resumed from \S+ at step (\d+)", logs[0] + logs[1])
    assert found, logs[0][-4000:] + logs[1][-4000:]
    resumed = int(found.group(1))
    assert lost_at - 2 <= resumed <= lost_at + 2  # the last checkpoint before the loss (one every 2 steps)
    assert checkpoint_step(out) == TOTAL
    assert max_difference(weights(reference), weights(out)) == 0.0
