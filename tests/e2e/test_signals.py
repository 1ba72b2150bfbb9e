"""Stop signals on real processes: `deepmim pretrain` alone and under torchrun (2 gloo processes).

A signal lands at a random step (seeded); the run saves the step every process agreed on, exits with
128 + the signal's number (torchrun itself exits 1 after its workers stopped), and the resumed run
ends with exactly the weights of an uninterrupted run on the same number of processes."""

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.processes import ENV, TINY, children, deepmim, logged_step, max_difference, weights

pytestmark = pytest.mark.slow

OVERRIDES = ["train.epochs=6", "train.log_every_steps=1", "train.batch_size=8"]  # 48 steps
TOTAL = 48


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    path = root / "tiny.yaml"
    path.write_text(TINY)
    return path


def reference(recipe: Path, procs: int) -> dict:
    out = recipe.parent / f"reference-{procs}"
    if not (out / "checkpoint-last.pt").exists():
        per_process = [f"train.batch_size={8 // procs}"]
        done = subprocess.run(
            deepmim(recipe, out, *OVERRIDES, *per_process, procs=procs),
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return weights(out)


CASES = [  # (signal, processes, whom it is sent to)
    ("SIGINT", 1, "process"),
    ("SIGTERM", 1, "process"),
    ("SIGUSR1", 1, "process"),
    ("SIGTERM", 2, "torchrun"),  # as Kubernetes or SLURM's step: torchrun forwards it to the workers
    ("SIGUSR1", 2, "rank 1"),  # only one worker hears it: the all-reduced flag stops both after the same step
    ("SIGINT", 2, "group"),  # Ctrl-C in a terminal: torchrun and both workers at once
    ("SIGTERM", 1, "group with a loader worker"),  # the worker ignores it, the trainer saves
]


@pytest.mark.parametrize("name,procs,target", CASES)
def test_signal_at_a_random_step_saves_exits_and_resumes_to_the_same_weights(recipe, name, procs, target):
    signum = getattr(signal, name)
    at_least = random.Random(f"{name}{procs}{target}").randint(2, 30)
    out = recipe.parent / f"{name}-{procs}-{target.replace(' ', '')}"
    per_process = [f"train.batch_size={8 // procs}"] + (["data.num_workers=1"] if "worker" in target else [])
    torchrun_args = ["--signals-to-handle=SIGTERM,SIGINT,SIGUSR1"] if procs > 1 else []
    proc = subprocess.Popen(
        deepmim(recipe, out, *OVERRIDES, *per_process, procs=procs, torchrun_args=torchrun_args),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and logged_step(out) < at_least and proc.poll() is None:
            time.sleep(0.01)
        if target in ("process", "torchrun"):
            os.kill(proc.pid, signum)
        elif target.startswith("group"):
            os.killpg(proc.pid, signum)
        else:
            workers = children(proc.pid)
            assert len(workers) == 2
            os.kill(workers[-1], signum)
        log, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    saved = torch.load(out / "checkpoint-last.pt", weights_only=True)["step"]
    assert at_least <= saved < TOTAL, log[-3000:]
    assert f"stopped by {name} after step {saved}: checkpoint" in log, log[-3000:]
    assert log.count("received: finishing this step") == (0 if target == "rank 1" else 1)  # rank 0 notes it once
    expected = 128 + signum if procs == 1 else 1  # torchrun's own code after its workers stopped
    assert proc.returncode == expected, log[-3000:]
    resumed = subprocess.run(
        deepmim(recipe, out, *OVERRIDES, *per_process, "train.resume=auto", procs=procs),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["step"] == TOTAL
    difference = max_difference(reference(recipe, procs), weights(out))
    print(
        f"\nMATRIX {name} at step>={at_least} to {target} ({procs} process(es)): saved step {saved}, "
        f"exit {proc.returncode}, resumed weights max |diff| {difference}"
    )
    assert difference == 0.0
