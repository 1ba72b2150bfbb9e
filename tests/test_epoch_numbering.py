"""One epoch numbering for people, counted from 1: numbered checkpoints, metrics.jsonl's `epoch`,
console messages and the resume line all say the same epoch."""
from __future__ import annotations

import dataclasses
import json

from deepmim.checkpoint import epoch_checkpoints, read_checkpoint
from deepmim.tasks.pretrain import run_pretrain
from deepmim.training.loop import describe_position
from tests.test_training import tiny_pretrain_config


def rows(out, kind):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_files_rows_and_messages_count_epochs_from_one(tmp_path, capsys):
    cfg = tiny_pretrain_config(tmp_path, epochs=2, save_every_epochs=1)  # 4 steps an epoch
    run_pretrain(cfg)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-epoch*")) == ["checkpoint-epoch0001.pt",
                                                                           "checkpoint-epoch0002.pt"]
    assert read_checkpoint(tmp_path / "checkpoint-epoch0001.pt").raw["step"] == 4  # after the first epoch
    assert sorted(epoch_checkpoints(tmp_path)) == [1, 2]
    assert [r["epoch"] for r in rows(tmp_path, "epoch")] == [1, 2]
    assert [(r["step"], r["epoch"]) for r in rows(tmp_path, "train")] == [(s, 1 + (s - 1) // 4) for s in range(1, 9)]


def test_resume_says_which_epochs_are_done(tmp_path, capsys):
    cfg = tiny_pretrain_config(tmp_path, epochs=3, max_steps=4)
    run_pretrain(cfg)
    capsys.readouterr()
    run_pretrain(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=None, resume="auto")))
    assert "at step 4: 1 of 3 epochs done, epoch 2 next" in capsys.readouterr().err


def test_describe_position():
    assert describe_position(10, 5, 4) == "2 of 4 epochs done, epoch 3 next"
    assert describe_position(12, 5, 4) == "in epoch 3 of 4 (step 2 of 5)"
