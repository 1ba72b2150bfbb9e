"""torch.distributed on this machine's CPUs: gloo processes under torchrun, on one node and on two.

The same global batch on 1 and 2 processes (DDP and FSDP2) must give the same weights and the same logged
losses; an FSDP checkpoint must resume on 1 process; a worker killed under --max-restarts must be restarted
and the run must end where an uninterrupted one does. Two `torchrun --nnodes 2` groups on 127.0.0.1 meet at
a c10d rendezvous and must end with the weights of one process; a run that loses a node resumes from the
last checkpoint and ends with the weights of the run that lost none."""

import json
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

from tests.helpers.models import save_tiny_pretrained
from tests.helpers.processes import (
    ENV,
    TINY,
    children,
    deepmim,
    launcher,
    logged_step,
    max_difference,
    train_losses,
    weights,
)

pytestmark = pytest.mark.slow


def run(cmd: list) -> None:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY)
    single = root / "single"
    run(deepmim(recipe, single))  # 3 epochs x 8 steps of 8 images
    return root, recipe, single


def test_ddp_two_processes_equal_one_process_with_the_same_global_batch(setup):
    root, recipe, single = setup
    out = root / "ddp"
    run(deepmim(recipe, out, "train.batch_size=4", procs=2))
    assert max_difference(weights(single), weights(out)) < 1e-4  # float reduction order only
    # The logged loss is the all-reduced mean over both processes: the single process's numbers.
    one, two = train_losses(single), train_losses(out)
    assert [s for s, _ in one] == [s for s, _ in two] and len(one) == 12
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(one, two))
    assert (out / "config.yaml").exists() and len((out / "metrics.jsonl").read_text().splitlines()) == 12 + 3


def test_fsdp_matches_and_its_checkpoint_resumes_on_one_process(setup):
    root, recipe, single = setup
    out = root / "fsdp"
    run(
        deepmim(
            recipe,
            out,
            "train.batch_size=4",
            "train.strategy=fsdp",
            "train.activation_checkpointing=true",
            "train.max_steps=12",
            procs=2,
        )
    )
    state = torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert state["step"] == 12
    assert all(type(v) is torch.Tensor for v in state["model"].values())  # gathered, not DTensor shards
    run(deepmim(recipe, out, "train.resume=auto"))  # 1 process, DDP-free, finishes the schedule
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["step"] == 24
    assert max_difference(weights(single), weights(out)) < 1e-4


def _step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["step"]
    except Exception:  # not written yet, or being replaced
        return -1


def test_killed_worker_is_restarted_by_torchrun_and_the_run_resumes(setup):
    root, recipe, _ = setup
    # 48 steps, a checkpoint every 2: the kill lands mid-run even when the test process is starved of CPU.
    common = ["train.batch_size=4", "train.epochs=6", "train.save_every_steps=2"]
    reference = root / "elastic-reference"
    run(deepmim(recipe, reference, *common, procs=2))
    out = root / "elastic"
    proc = subprocess.Popen(
        deepmim(recipe, out, *common, procs=2, torchrun_args=["--max-restarts=1"]),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _kill_a_worker_and_wait(proc, out, reference)
    finally:
        if proc.poll() is None:  # a hang must not outlive the test
            os.killpg(proc.pid, signal.SIGKILL)


def _kill_a_worker_and_wait(proc, out: Path, reference: Path) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and _step(out / "checkpoint-last.pt") < 4:
        time.sleep(0.02)
    workers = children(proc.pid)
    assert len(workers) == 2, "torchrun should have started two workers"
    killed_at = _step(out / "checkpoint-last.pt")
    os.kill(workers[-1], signal.SIGKILL)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    assert 4 <= killed_at < 48, "the kill must land mid-run"
    assert "resumed from" in log
    assert _step(out / "checkpoint-last.pt") == 48
    assert max_difference(weights(reference), weights(out)) == 0.0


def test_finetune_on_two_processes_counts_every_validation_image_once(tmp_path):

    pretrained = save_tiny_pretrained(tmp_path / "pretrained.pt")
    out = tmp_path / "finetune"
    cmd = launcher(2) + [
        "finetune",
        "--config",
        "finetune_demo",
        f"model.checkpoint={pretrained}",
        "data.img_size=16",
        "data.num_samples=161",
        "data.num_workers=0",
        "train.batch_size=16",
        "train.epochs=1",
        f"train.output_dir={out}",
        "train.progress=false",
        "train.tensorboard=false",
        "train.device=cpu",
        "train.precision=fp32",
    ]
    run(cmd)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluation = [r for r in rows if r["type"] == "eval"][-1]
    assert evaluation["images"] == 161  # shards of 81 + 80: none padded, none counted twice
    # The same checkpoint evaluated by one process gives the same numbers.
    single = subprocess.run(
        launcher() + ["evaluate", str(out / "checkpoint-last.pt")], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr[-3000:]
    data_line, scores = single.stdout.strip().splitlines()[-2:]  # the data it scored, then the numbers
    assert data_line.endswith("; val split 161 images")
    numbers = dict(zip(scores.split()[::2], scores.split()[1::2]))
    assert int(numbers["images"]) == 161
    assert float(numbers["top1"]) == pytest.approx(evaluation["top1"], abs=1e-3)
    assert float(numbers["loss"]) == pytest.approx(evaluation["loss"], rel=1e-4)


COMMON = ["train.epochs=10", "train.save_every_steps=2", "train.log_every_steps=2"]  # 80 steps of 8 images
TOTAL = 80


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(node_rank: int, port: int, recipe: Path, out: Path, *overrides: str, max_restarts: int = 0) -> list:
    """One node's launcher: torchrun with a c10d rendezvous on 127.0.0.1, one process per node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        f"--node_rank={node_rank}",
        "--nproc_per_node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        f"--rdzv-id=deepmim-{port}",
        f"--max-restarts={max_restarts}",
        "--monitor-interval=0.5",
        "-m",
        "deepmim",
        "pretrain",
        "--config",
        str(recipe),
        f"train.output_dir={out}",
        *COMMON,
        *overrides,
    ]


# A replaced node joins a rendezvous round whose rank 0 agent already ran one: with the agents' shared
# TCP store, torch's agents then wait for a master address nobody writes. Without it, every round gets
# its own store (hosted by the round's rank 0 worker).
NODE_ENV = {**ENV, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def start(cmd: list) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, env=NODE_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


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
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepmim",
            "pretrain",
            "--config",
            str(recipe),
            f"train.output_dir={single}",
            *COMMON,
            "train.batch_size=8",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
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
    cmd = lambda rank: node(
        rank,
        port,
        recipe,
        out,
        "train.batch_size=4",
        "train.resume=auto",  # noqa: E731
        max_restarts=2,
    )
    first = start(cmd(0))
    time.sleep(1.0)
    second = start(cmd(1))
    deadline = time.time() + 240
    while time.time() < deadline and logged_step(out) < 10 and first.poll() is None:
        time.sleep(0.01)
    lost_at = logged_step(out)
    workers = children(second.pid)  # torchrun starts its workers in sessions of their own
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
