"""train.online_probe: linear heads beside pre-training that learn, log, resume exactly and change nothing else."""

from pathlib import Path

import pytest
import torch

from deepmim.config.loader import ConfigError
from deepmim.config.schema import DataConfig, PretrainConfig
from deepmim.tasks.pretrain import load_pretrain_config, run_pretrain
from deepmim.training.online_probe import resolve_probe_blocks
from tests.helpers.data import separable_idx
from tests.helpers.runs import rows, tiny_pretrain_config


def probe_config(out: Path, online_probe: bool = True, num_samples: int = 64, **train) -> PretrainConfig:
    """The 16px tiny run of test_training (4 blocks, heads on 2 and 4), with or without the probe."""
    probe = {"online_probe_blocks": "all", "online_probe_val_images": 32, **train}
    return tiny_pretrain_config(out, num_samples=num_samples, online_probe=online_probe, **probe)


def checkpoint(out: Path):
    return torch.load(out / "checkpoint-last.pt", weights_only=True)


def assert_equal_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert sorted(a, key=str) == sorted(b, key=str), where
        for key in a:
            assert_equal_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_tensors(x, y, f"{where}.{i}")
    else:
        assert a == b, where


def test_online_probe_leaves_every_weight_loss_and_rng_state_as_without_it(tmp_path):
    run_pretrain(probe_config(tmp_path / "with"))
    run_pretrain(probe_config(tmp_path / "without", online_probe=False))
    a, b = checkpoint(tmp_path / "with"), checkpoint(tmp_path / "without")
    assert any(k.startswith("decoders.") for k in a["model"])
    assert_equal_tensors(a["model"], b["model"], "model")  # encoder and decoders, every tensor
    assert_equal_tensors(a["optimizer"], b["optimizer"], "optimizer")
    assert_equal_tensors(a["rng"], b["rng"], "rng")
    assert not any("probe" in k for k in a["model"])  # the heads are not in the model's state dict
    heads = a["hooks"]["online_probe"]["heads"]
    assert sorted({k.split(".")[0] for k in heads}) == ["1", "2", "3", "4"]  # online_probe_blocks=all
    assert b["hooks"] == {}
    losses = lambda out: [(r["step"], r["loss"], r["loss_block2"], r["loss_block4"]) for r in rows(out, "train")]
    assert losses(tmp_path / "with") == losses(tmp_path / "without")


def test_online_probe_logs_train_epoch_and_val_rows(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_pretrain(probe_config(tmp_path, online_probe_blocks="supervised", tensorboard=True))
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    tags = events.Tags()["scalars"]
    assert {
        "epoch/online_probe_top1_block4",
        "eval/online_probe_val_top1_block2",
        "train/online_probe_top1_block2",
    } <= set(tags)
    assert [e.step for e in events.Scalars("eval/online_probe_val_top1_block4")] == [4, 8]
    train, epochs, evals = rows(tmp_path, "train"), rows(tmp_path, "epoch"), rows(tmp_path, "eval")
    keys = ["online_probe_top1_block2", "online_probe_top1_block4"]
    assert len(train) == 8 and all(0 <= r[k] <= 100 for r in train for k in keys)
    assert len(epochs) == 2 and all(k in epochs[0] for k in keys)
    assert [r["epoch"] for r in evals] == [1, 2]  # epochs counted from 1
    for r in evals:  # 32 val images: every value is a multiple of 100/32
        for b in (2, 4):
            v = r[f"online_probe_val_top1_block{b}"]
            assert 0 <= v <= 100 and abs(v * 32 / 100 - round(v * 32 / 100)) < 1e-9
        assert "online_probe_val_top1_block1" not in r


def test_online_probe_resumes_exactly(tmp_path):
    run_pretrain(probe_config(tmp_path / "full", epochs=3))
    part = tmp_path / "part"
    run_pretrain(probe_config(part, epochs=3, max_steps=5))
    run_pretrain(probe_config(part, epochs=3, resume="auto"))
    assert_equal_tensors(checkpoint(tmp_path / "full")["hooks"], checkpoint(part)["hooks"], "hooks")
    probe_rows = lambda out, kind: [{k: v for k, v in r.items() if "probe" in k} for r in rows(out, kind)]
    assert probe_rows(tmp_path / "full", "train") == probe_rows(part, "train")
    assert probe_rows(tmp_path / "full", "eval") == probe_rows(part, "eval")


def test_online_probe_learns_separable_data_far_above_chance(tmp_path):
    cfg = probe_config(tmp_path / "run", epochs=3, online_probe_blocks="supervised", online_probe_val_images=160)
    cfg.data = DataConfig(name="idx", path=str(separable_idx(tmp_path)), img_size=16, num_workers=0)
    run_pretrain(cfg)
    val, train = rows(tmp_path / "run", "eval"), rows(tmp_path / "run", "epoch")
    for b in (2, 4):  # chance: 25 %
        assert val[-1][f"online_probe_val_top1_block{b}"] >= 95.0
        assert train[0][f"online_probe_top1_block{b}"] < train[-1][f"online_probe_top1_block{b}"]
        assert train[-1][f"online_probe_top1_block{b}"] >= 80.0  # masked, augmented training views


def test_online_probe_options_are_checked():
    assert resolve_probe_blocks("supervised", [4, 2], 4) == [2, 4]
    assert resolve_probe_blocks("all", [4], 4) == [1, 2, 3, 4]
    assert resolve_probe_blocks([3, 1, 3], [4], 4) == [1, 3]
    for bad in ("most", [0, 2], [5], []):
        with pytest.raises(ConfigError, match="online_probe_blocks"):
            resolve_probe_blocks(bad, [4], 4)
    cfg = load_pretrain_config("demo", ["train.online_probe=true", "train.online_probe_blocks=[1,6]"])
    assert cfg.train.online_probe and cfg.train.online_probe_blocks == [1, 6]
    with pytest.raises(ConfigError, match="online_probe_blok"):
        load_pretrain_config("demo", ["train.online_probe_blok=all"])
