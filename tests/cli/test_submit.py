"""`deepmim submit`: the same recipe and overrides as a SLURM job through submitit. The sbatch script of a
dry run, the config checked before anything is submitted, and real jobs on submitit's local executor: two
tasks that train as torchrun's two processes do, and a job signalled ahead of its time limit that saves,
is requeued by submitit and ends with the weights of a job that never stopped."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepmim.cli.main import main
from tests.helpers.processes import ENV, TINY, children, deepmim, max_difference, weights

submitit = pytest.importorskip("submitit")

OVERRIDES = ["train.epochs=6", "train.batch_size=4", "train.save_every_steps=4", "train.log_every_steps=4"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("submit") / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_dry_run_prints_the_sbatch_script_and_submits_nothing(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "submit",
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--partition",
            "learnlab",
            "--time",
            "1-12:00:00",
            "--account",
            "vision",
            "--dry-run",
            "pretrain",
            "--config",
            str(recipe),
            f"train.output_dir={out}",
            "train.epochs=800",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=learnlab",
        "#SBATCH --account=vision",
        "#SBATCH --time=2160",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@120",
        "srun ",
    ):
        assert line in text, line
    assert (
        f"deepmim pretrain --config {recipe} train.output_dir={out} train.epochs=800 train.save_signal=SIGUSR2" in text
    )
    assert not out.exists()  # nothing written, nothing submitted


def test_a_config_the_command_refuses_is_refused_before_submitting(recipe, tmp_path, capsys):
    code = main(
        [
            "submit",
            "--dry-run",
            "pretrain",
            "--config",
            str(recipe),
            "train.epochs=0",
            f"train.output_dir={tmp_path / 'run'}",
        ]
    )
    assert code == 2 and "train.epochs must be at least 1" in capsys.readouterr().err
    code = main(["submit", "--dry-run", "pretrain", "--config", str(recipe), "--gpus", "8"])
    assert code == 2 and "options of submit itself go before the command" in capsys.readouterr().err


def local_job(folder: Path, argv: list):
    from deepmim.cli.submit import TrainingJob

    executor = submitit.LocalExecutor(folder=str(folder))
    executor.update_parameters(nodes=1, tasks_per_node=2, timeout_min=20)
    return executor.submit(TrainingJob(argv))


@pytest.fixture(scope="module")
def uninterrupted(recipe):
    """Two tasks on submitit's local executor, as srun starts them."""
    out = recipe.parent / "local"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepmim",
            "submit",
            "--cluster",
            "local",
            "--gpus-per-node",
            "0",
            "--tasks-per-node",
            "2",
            "pretrain",
            "--config",
            str(recipe),
            f"train.output_dir={out}",
            *OVERRIDES,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "job" in done.stdout and "finished" in done.stdout
    return out


@pytest.mark.slow
def test_local_job_with_two_tasks_trains_as_two_torchrun_processes(recipe, uninterrupted):

    state = torch.load(uninterrupted / "checkpoint-last.pt", weights_only=True)
    assert state["step"] == 48
    torchrun = recipe.parent / "torchrun"
    done = subprocess.run(
        deepmim(recipe, torchrun, *OVERRIDES, procs=2), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert max_difference(weights(torchrun), weights(uninterrupted)) == 0.0


@pytest.mark.slow
def test_signal_before_the_time_limit_saves_requeues_and_resumes(recipe, uninterrupted, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = recipe.parent / "requeued"
    job = local_job(
        recipe.parent / "jobs", ["pretrain", "--config", str(recipe), f"train.output_dir={out}", *OVERRIDES]
    )
    try:
        deadline = time.time() + 300
        step = -1
        while time.time() < deadline and step < 8:
            try:
                step = torch.load(out / "checkpoint-last.pt", weights_only=True)["step"]
            except Exception:  # not written yet
                time.sleep(0.05)
        tasks = children(job._process.pid)
        assert len(tasks) == 2
        for pid in tasks:  # SLURM's --signal=USR2@N reaches every task
            os.kill(pid, signal.SIGUSR2)
        job.wait()
    finally:
        if job.state not in ("FINISHED", "COMPLETED"):
            job.cancel()
    assert job.state == "FINISHED" and job.exception() is None, job.stderr()
    log = job.stdout() + (job.stderr() or "")
    assert "stopped by SIGUSR2 after step" in log and "Requeued job" in log and "resumed from" in log
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["step"] == 48
    assert max_difference(weights(uninterrupted), weights(out)) == 0.0
