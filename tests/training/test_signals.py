"""Stop signals: SIGTERM, SIGINT and train.save_signal finish the step, every process agrees, a checkpoint
is written through the guard, the command exits with 128 + the signal's number, and the resumed run ends
with the weights of a run that never stopped. Under SLURM, train.requeue=true requeues the job."""

import os
import random
import signal
import stat
from pathlib import Path

import pytest
import torch

from deepmim.config.loader import ConfigError
from deepmim.tasks.pretrain import run_pretrain
from deepmim.training.loop import Trainer, requested_resume
from deepmim.training.signals import Stopped, exit_code, parse_signal
from tests.helpers.runs import assert_same_weights, final_weights, tiny_pretrain_config

TOTAL = 12  # tiny_pretrain_config with epochs=3: 4 steps an epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("signals") / "full"
    run_pretrain(tiny_pretrain_config(out, epochs=3))
    return final_weights(out)


def signal_after_step(monkeypatch, at_step: int, signum: int, repeats: int = 1):
    """Send `signum` to this process (`repeats` times) right after optimizer step `at_step`."""
    original = Trainer.optimizer_step

    def step_then_signal(self):
        original(self)
        if self.step == at_step:
            for _ in range(repeats):
                os.kill(os.getpid(), signum)

    monkeypatch.setattr(Trainer, "optimizer_step", step_then_signal)


@pytest.mark.parametrize(
    "signum,at_step",
    [
        (signal.SIGTERM, 3),
        (signal.SIGINT, 5),
        (signal.SIGUSR1, 1),
        (signal.SIGTERM, 8),
        (signal.SIGUSR1, random.Random(29).randint(1, 10)),
    ],
)
def test_signal_saves_the_step_and_the_resumed_run_ends_with_the_same_weights(
    tmp_path, monkeypatch, uninterrupted, signum, at_step
):
    out = tmp_path / "run"
    signal_after_step(monkeypatch, at_step, signum, repeats=2)  # the repeat is ignored
    with pytest.raises(Stopped) as stop:
        run_pretrain(tiny_pretrain_config(out, epochs=3))
    assert stop.value.step == at_step and stop.value.exit_code == 128 + signum
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["step"] == at_step
    assert f"stopped by {signal.Signals(signum).name} after step {at_step}" in str(stop.value)
    # the handlers the process had before fit() are back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    resumed = run_pretrain(tiny_pretrain_config(out, epochs=3, resume="auto"))
    assert resumed.start_step == at_step and resumed.step == TOTAL and resumed.finished
    assert_same_weights(uninterrupted, final_weights(out))


def test_signal_during_the_save_is_ignored_and_the_file_is_whole(tmp_path, monkeypatch, uninterrupted):
    out = tmp_path / "run"
    signal_after_step(monkeypatch, 6, signal.SIGTERM)
    original_write = Trainer.write

    def write_under_fire(self, state, numbered_epoch=None):
        if self.stop_signal:  # the stop's checkpoint: Ctrl-C and another SIGTERM while it is written
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        original_write(self, state, numbered_epoch)

    monkeypatch.setattr(Trainer, "write", write_under_fire)
    with pytest.raises(Stopped) as stop:
        run_pretrain(tiny_pretrain_config(out, epochs=3))
    assert stop.value.exit_code == 143 and stop.value.step == 6
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["step"] == 6
    monkeypatch.undo()
    run_pretrain(tiny_pretrain_config(out, epochs=3, resume="auto"))
    assert_same_weights(uninterrupted, final_weights(out))


def fake_scontrol(folder: Path) -> Path:
    """An `scontrol` that records its arguments in folder/scontrol.log."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {folder / "scontrol.log"}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder / "scontrol.log"


def test_requeue_under_slurm_runs_scontrol_after_the_save_and_the_requeued_job_resumes(
    tmp_path, monkeypatch, uninterrupted
):
    log = fake_scontrol(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    out = tmp_path / "run"
    signal_after_step(monkeypatch, 7, signal.SIGUSR1)
    with pytest.raises(Stopped) as stop:
        run_pretrain(tiny_pretrain_config(out, epochs=3, requeue=True))
    assert log.read_text().split() == ["requeue", "4242"]
    assert "SLURM job 4242 requeued" in str(stop.value) and stop.value.exit_code == 138
    # SLURM runs the same command again with SLURM_RESTART_COUNT=1: it resumes without train.resume
    monkeypatch.undo()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    cfg = tiny_pretrain_config(out, epochs=3, requeue=True)
    assert requested_resume(cfg.train) == "auto"
    result = run_pretrain(cfg)
    assert result.start_step == 7 and result.finished
    assert_same_weights(uninterrupted, final_weights(out))


def test_requeue_without_slurm_only_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    signal_after_step(monkeypatch, 2, signal.SIGTERM)
    with pytest.raises(Stopped) as stop:
        run_pretrain(tiny_pretrain_config(tmp_path / "run", epochs=3, requeue=True))
    assert "SLURM_JOB_ID is not set: not requeued" in str(stop.value)


def test_save_signal_is_checked_and_can_be_turned_off(tmp_path, monkeypatch):
    assert parse_signal("USR2") == signal.SIGUSR2 and parse_signal("SIGUSR1") == signal.SIGUSR1
    assert exit_code(signal.SIGINT) == 130 and exit_code(signal.SIGTERM) == 143
    with pytest.raises(ConfigError, match="train.save_signal"):
        run_pretrain(tiny_pretrain_config(tmp_path / "bad", save_signal="SIGKILL"))
    # save_signal=null: SIGUSR1 keeps its usual meaning (here: a handler of the test's own)
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    try:
        signal_after_step(monkeypatch, 2, signal.SIGUSR1)
        result = run_pretrain(tiny_pretrain_config(tmp_path / "off", epochs=1, save_signal=None))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert result.finished and seen == [signal.SIGUSR1]
