"""torch.distributed on this machine's CPUs: 2 gloo processes under torchrun.

The same global batch on 1 and 2 processes (DDP and FSDP2) must give the same weights and the same
logged losses; an FSDP checkpoint must resume on 1 process; a worker killed under torchrun's
--max-restarts must be restarted and the run must end where an uninterrupted one does.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

TINY = """\
model:
  encoder: {img_size: 16, patch_size: 4, embed_dim: 32, depth: 4, num_heads: 2}
  heads:
    - {block: 2, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}
    - {block: 4, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}
data: {name: embedded, img_size: 16, num_samples: 64, num_workers: 0}
optim: {base_lr: 1.0e-3, warmup_epochs: 1}
train: {epochs: 3, batch_size: 8, log_every_steps: 2, progress: false, tensorboard: false, plots: false,
        precision: fp32, device: cpu, seed: 3}
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def launcher(procs: int = 1, torchrun_args=()) -> list:
    """`python -m deepmim` on 1 process, or under torchrun (--standalone: a free port) on `procs`."""
    if procs == 1:
        return [sys.executable, "-m", "deepmim"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
            *torchrun_args, "-m", "deepmim"]


def deepmim(recipe: Path, out: Path, *overrides: str, procs: int = 1, torchrun_args=()) -> list:
    """The command line of a `deepmim pretrain` run on `procs` processes."""
    return launcher(procs, torchrun_args) + ["pretrain", "--config", str(recipe), f"train.output_dir={out}",
                                             *overrides]


def run(cmd: list) -> None:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def weights(out: Path) -> dict:
    return torch.load(out / "checkpoint-last.pt", weights_only=True)["model"]


def train_losses(out: Path) -> list:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["type"] == "train"]


def max_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


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
    run(deepmim(recipe, out, "train.batch_size=4", "train.strategy=fsdp", "train.activation_checkpointing=true",
                "train.max_steps=12", procs=2))
    state = torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert state["step"] == 12
    assert all(type(v) is torch.Tensor for v in state["model"].values())  # gathered, not DTensor shards
    run(deepmim(recipe, out, "train.resume=auto"))  # 1 process, DDP-free, finishes the schedule
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["step"] == 24
    assert max_difference(weights(single), weights(out)) < 1e-4


def _children(pid: int) -> list:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


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
    proc = subprocess.Popen(deepmim(recipe, out, *common, procs=2, torchrun_args=["--max-restarts=1"]), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _kill_a_worker_and_wait(proc, out, reference)
    finally:
        if proc.poll() is None:  # a hang must not outlive the test
            os.killpg(proc.pid, signal.SIGKILL)


def _kill_a_worker_and_wait(proc, out: Path, reference: Path) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and _step(out / "checkpoint-last.pt") < 4:
        time.sleep(0.02)
    workers = _children(proc.pid)
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
    from tests.conftest import save_tiny_pretrained

    pretrained = save_tiny_pretrained(tmp_path / "pretrained.pt")
    out = tmp_path / "finetune"
    cmd = launcher(2) + ["finetune", "--config", "finetune_demo", f"model.checkpoint={pretrained}", "data.img_size=16",
           "data.num_samples=161", "data.num_workers=0", "train.batch_size=16", "train.epochs=1",
           f"train.output_dir={out}", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
           "train.precision=fp32"]
    run(cmd)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluation = [r for r in rows if r["type"] == "eval"][-1]
    assert evaluation["images"] == 161  # shards of 81 + 80: none padded, none counted twice
    # The same checkpoint evaluated by one process gives the same numbers.
    single = subprocess.run(launcher() + ["evaluate", str(out / "checkpoint-last.pt")], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    data_line, scores = single.stdout.strip().splitlines()[-2:]  # the data it scored, then the numbers
    assert data_line.endswith("; val split 161 images")
    numbers = dict(zip(scores.split()[::2], scores.split()[1::2]))
    assert int(numbers["images"]) == 161
    assert float(numbers["top1"]) == pytest.approx(evaluation["top1"], abs=1e-3)
    assert float(numbers["loss"]) == pytest.approx(evaluation["loss"], rel=1e-4)
