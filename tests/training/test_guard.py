"""The divergence guard: a non-finite loss or exploding weights never reach checkpoint-last.pt, the
last step is checked before its checkpoint, and the guard can be turned off."""

import dataclasses
import re

import pytest
import torch

from deepmim.checkpoint import LAST, PREV
from deepmim.config.loader import ConfigError
from deepmim.tasks.pretrain import load_pretrain_config, run_pretrain
from deepmim.training.guard import DivergenceError
from deepmim.training.loop import Trainer
from tests.helpers.runs import tiny_pretrain_config


def with_lr(cfg, base_lr: float):
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, base_lr=base_lr))


def test_the_last_step_of_a_run_is_checked_before_its_checkpoint_is_written(tmp_path):
    """A resumed run whose last step wrecks the weights (lr 20) stops without writing them: the loss of
    the final weights is 100x the running average, and the checkpoint it names as good is the step before."""
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=3, max_steps=4, log_every_steps=2))
    before = (tmp_path / LAST).read_bytes()
    wrecked = with_lr(tiny_pretrain_config(tmp_path, epochs=3, max_steps=5, resume="auto", log_every_steps=2), 20.0)
    with pytest.raises(
        DivergenceError,
        match=r"times its running average.*from the final weights of step 5.*"
        rf"last good checkpoint is {re.escape(str(tmp_path / LAST))} \(step 4\)",
    ):
        run_pretrain(wrecked)
    assert (tmp_path / LAST).read_bytes() == before  # step 5's weights never reached the disk
    result = run_pretrain(tiny_pretrain_config(tmp_path, epochs=3, max_steps=5, resume="auto", log_every_steps=2))
    assert (result.start_step, result.step) == (4, 5)  # a sound last step is written as before
    assert torch.load(tmp_path / LAST, weights_only=True)["step"] == 5


def _explode_after_step(monkeypatch, step: int, scale: float = 1e5):
    """After optimizer step `step`, multiply every weight by `scale`: that step's loss was finite."""
    real = Trainer.optimizer_step

    def optimizer_step(self):
        real(self)
        if self.step == step:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.mul_(scale)

    monkeypatch.setattr(Trainer, "optimizer_step", optimizer_step)


def test_a_finite_loss_step_that_explodes_the_weights_never_reaches_checkpoint_last(tmp_path, monkeypatch):
    _explode_after_step(monkeypatch, 6)
    cfg = tiny_pretrain_config(tmp_path, epochs=3, save_every_steps=1, log_every_steps=100)
    with pytest.raises(
        DivergenceError,
        match=r"weights' norm grew .* between step 5 and step 6.*the last good "
        rf"checkpoint is {re.escape(str(tmp_path / LAST))} \(step 5\)",
    ):
        run_pretrain(cfg)
    last, prev = (torch.load(tmp_path / name, weights_only=True) for name in (LAST, PREV))
    assert (last["step"], prev["step"]) == (5, 4)
    assert max(v.abs().max().item() for v in last["model"].values()) < 100  # the weights before the explosion
    # and the run continues from it, once the cause is gone
    monkeypatch.undo()
    assert run_pretrain(tiny_pretrain_config(tmp_path, epochs=3, resume="auto")).finished


def test_a_loss_spike_keeps_the_state_it_came_from_off_the_disk(tmp_path, monkeypatch):
    import deepmim.tasks.pretrain as pretrain_task

    real_loss, calls = pretrain_task.pretrain_loss, {"n": 0}

    def spiking_loss(model, batch, generator):
        calls["n"] += 1
        loss, metrics = real_loss(model, batch, generator)
        return (loss * 1e4 if calls["n"] == 5 else loss), metrics  # step 5's loss: the weights of step 4

    monkeypatch.setattr(pretrain_task, "pretrain_loss", spiking_loss)
    cfg = tiny_pretrain_config(tmp_path, epochs=3, save_every_steps=2)
    with pytest.raises(
        DivergenceError,
        match=r"times its running average.*at step 5.*last good checkpoint is "
        r".*checkpoint-last\.pt \(step 2\)",
    ):
        run_pretrain(cfg)
    assert torch.load(tmp_path / LAST, weights_only=True)["step"] == 2  # the state of step 4 was never written


def test_the_guard_can_be_turned_off_and_refuses_silly_factors(tmp_path, monkeypatch):
    _explode_after_step(monkeypatch, 2, scale=20.0)  # weights 20x in one step: more than the default factor
    with pytest.raises(DivergenceError, match="grew 20-fold"):
        run_pretrain(tiny_pretrain_config(tmp_path / "on", epochs=1))
    assert run_pretrain(tiny_pretrain_config(tmp_path / "off", epochs=1, divergence_factor=None)).finished
    with pytest.raises(ConfigError, match="train.divergence_factor must be above 1"):
        load_pretrain_config("demo", ["train.divergence_factor=0.5"])


def test_non_finite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import deepmim.tasks.pretrain as pretrain_task

    real_loss = pretrain_task.pretrain_loss
    calls = {"n": 0}

    def exploding_loss(model, batch, generator):
        calls["n"] += 1
        loss, metrics = real_loss(model, batch, generator)
        if calls["n"] > 6:  # from the 7th step: inside the second epoch
            loss = loss * float("nan")
        return loss, metrics

    monkeypatch.setattr(pretrain_task, "pretrain_loss", exploding_loss)
    cfg = tiny_pretrain_config(tmp_path, epochs=3, log_every_steps=100)
    with pytest.raises(DivergenceError, match=r"non-finite loss at step \d+ \(epoch 2\).*last good checkpoint"):
        run_pretrain(cfg)
    state = torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)
    assert state["step"] == 4  # the end of the first epoch, the last finite state
    assert all(torch.isfinite(v).all() for v in state["model"].values())
