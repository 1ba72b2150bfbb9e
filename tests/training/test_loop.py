"""The Trainer: seeds, exact resume (mid-epoch, after a kill, across epochs), outputs, logs and plots,
broken images counted, epochs numbered from 1, and resumes that refuse or explain."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepmim.checkpoint import LAST, epoch_checkpoints, read_checkpoint
from deepmim.cli.main import main
from deepmim.config.loader import dump_yaml
from deepmim.config.schema import DataConfig, OptimConfig
from deepmim.models import DeepMIM, load_checkpoint
from deepmim.tasks.pretrain import run_pretrain
from deepmim.training.env import Env
from deepmim.training.loop import TaskSpec, TrainData, Trainer, TrainModel, describe_position
from deepmim.training.optim import build_adamw
from tests.helpers.cli import cli_error
from tests.helpers.models import tiny_model_config
from tests.helpers.runs import TINY, assert_same_weights, copy_run, final_weights, rows, tiny_pretrain_config


def test_files_rows_and_messages_count_epochs_from_one(tmp_path, capsys):
    cfg = tiny_pretrain_config(tmp_path, epochs=2, save_every_epochs=1)  # 4 steps an epoch
    run_pretrain(cfg)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-epoch*")) == [
        "checkpoint-epoch0001.pt",
        "checkpoint-epoch0002.pt",
    ]
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


def test_a_loader_that_runs_dry_mid_epoch_stops_instead_of_repeating_the_epoch(tmp_path):
    from deepmim.config.schema import OptimConfig, TrainConfig

    class ShortLoader:  # says 4 batches an epoch, gives 2
        def __len__(self):
            return 4

        def set_epoch(self, epoch, start_batch=0):
            pass

        def __iter__(self):
            return iter([(torch.randn(2, 3),)] * 2)

    def loss(model, batch, generator):
        out = model(batch[0]).pow(2).mean()
        return out, {}

    train = TrainConfig(
        epochs=2,
        batch_size=2,
        output_dir=str(tmp_path),
        progress=False,
        tensorboard=False,
        plots=False,
        log_every_steps=1,
        device="cpu",
        precision="fp32",
    )
    trainer = Trainer(
        TrainModel(torch.nn.Linear(3, 3)),
        TrainData(ShortLoader()),
        TaskSpec("pretrain", train, OptimConfig(warmup_epochs=0), loss),
        Env(torch.device("cpu"), "fp32"),
    )
    with pytest.raises(ValueError, match=r"the data ran out after 2 of the 4 steps of epoch 0"):
        trainer.fit()
    assert trainer.step == 2


@pytest.mark.slow
def test_final_line_and_plots_written_on_resume(tmp_path, capsys):
    cfg = tiny_pretrain_config(tmp_path / "run", epochs=2, log_every_steps=3, plots=True)  # 4 steps an epoch
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(dump_yaml(cfg))
    assert main(["pretrain", "--config", str(recipe)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epoch_mean = [r for r in rows if r["type"] == "epoch"][-1]["loss"]
    logged = [r for r in rows if r["type"] == "train"][-1]
    assert logged["step"] == 8 and logged["loss"] != epoch_mean
    assert (
        f"pretrain finished: 8 steps, mean loss of the last epoch {epoch_mean:.4f}, last logged loss "
        f"{logged['loss']:.4f} (step 8), checkpoint "
    ) in last
    for name in ("loss.png", "reconstruction.png"):  # as if killed before the plots were drawn
        (tmp_path / "run" / name).unlink()
    assert main(["pretrain", "--config", str(recipe), "train.resume=auto"]) == 0
    captured = capsys.readouterr()
    assert "nothing trained" in captured.out and "wrote" in captured.err
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "run" / "reconstruction.png").stat().st_size > 1000
    before = (tmp_path / "run" / "loss.png").stat().st_mtime_ns
    assert main(["pretrain", "--config", str(recipe), "train.resume=auto"]) == 0  # nothing missing: left alone
    assert (tmp_path / "run" / "loss.png").stat().st_mtime_ns == before


def test_resuming_another_architecture_names_the_config_keys_that_differ(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    err = cli_error(
        capsys,
        "pretrain",
        *TINY,
        f"train.output_dir={run}",
        "train.resume=auto",
        "model.encoder.embed_dim=64",
        "model.encoder.num_heads=4",
    )
    assert "holds another model than this run builds" in err and "model.encoder.embed_dim: 128 -> 64" in err
    assert len(err) < 700  # not a wall of shape mismatches


def test_epoch_means_after_a_mid_epoch_resume_are_those_of_the_uninterrupted_run(tmp_path, monkeypatch):
    common = dict(epochs=2, save_every_steps=2, log_every_steps=3)
    run_pretrain(tiny_pretrain_config(tmp_path / "full", **common))
    real = Trainer.optimizer_step

    def killed_at_step_3(self):  # after the checkpoint of step 2 was written (confirmed by step 3's loss)
        real(self)
        if self.step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "optimizer_step", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(tiny_pretrain_config(tmp_path / "part", **common))
    monkeypatch.undo()
    assert torch.load(tmp_path / "part" / LAST, weights_only=True)["step"] == 2
    run_pretrain(tiny_pretrain_config(tmp_path / "part", resume="auto", **common))
    for kind in ("epoch", "train"):  # the log window open at the kill is carried too
        assert [{k: v for k, v in r.items() if k != "img_per_s"} for r in rows(tmp_path / "part", kind)] == [
            {k: v for k, v in r.items() if k != "img_per_s"} for r in rows(tmp_path / "full", kind)
        ]


def test_resuming_a_finished_run_says_so_honestly(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    metrics_before = (run / "metrics.jsonl").read_text()
    assert main(["pretrain", *TINY, f"train.output_dir={run}", "train.resume=auto"]) == 0
    captured = capsys.readouterr()
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith(
        "pretrain: nothing trained, the run had already reached step 8, mean loss of the last epoch "
    )
    assert "nan" not in last and "None" not in last and str(run / LAST) in last
    assert "holds the finished run (8 steps, all 2 epochs)" in captured.err
    assert (run / "metrics.jsonl").read_text() == metrics_before


def test_same_seed_same_weights_and_different_seed_differs(tmp_path):
    run_pretrain(tiny_pretrain_config(tmp_path / "a"))
    run_pretrain(tiny_pretrain_config(tmp_path / "b"))
    run_pretrain(tiny_pretrain_config(tmp_path / "c", seed=4))
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))
    wa, wc = final_weights(tmp_path / "a"), final_weights(tmp_path / "c")
    assert not torch.equal(wa["encoder.blocks.0.attn.qkv.weight"], wc["encoder.blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stop_and_resume_mid_epoch_equals_uninterrupted(tmp_path, precision):
    full = tmp_path / "full"
    run_pretrain(tiny_pretrain_config(full, epochs=3, accum_steps=2, batch_size=8, precision=precision))
    part = tmp_path / "part"
    first = run_pretrain(
        tiny_pretrain_config(part, epochs=3, accum_steps=2, batch_size=8, max_steps=5, precision=precision)
    )
    assert first.step == 5 and not first.finished
    second = run_pretrain(
        tiny_pretrain_config(part, epochs=3, accum_steps=2, batch_size=8, resume="auto", precision=precision)
    )
    assert second.finished and second.step == 12
    assert_same_weights(final_weights(full), final_weights(part))
    # the log of the resumed run reads like the uninterrupted one
    rows = lambda d: [
        (r["step"], r["loss"])
        for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
        if r["type"] == "train"
    ]
    assert rows(full) == rows(part)


@pytest.mark.slow
def test_killed_process_resumes_to_identical_weights(tmp_path):
    """SIGKILL a real `deepmim pretrain` process mid-run, resume it, compare with an uninterrupted run."""
    common = [
        "model.preset=mae_vit_micro_p4_32",
        "model.encoder.img_size=16",
        "model.encoder.depth=2",
        "model.heads.0.block=2",
        "data.img_size=16",
        "data.num_samples=256",
        "data.num_workers=0",
        "train.batch_size=16",
        "train.epochs=3",
        "train.save_every_steps=3",
        "train.precision=fp32",
        "train.device=cpu",
        "train.progress=false",
        "train.plots=false",
        "train.tensorboard=false",
        "optim.warmup_epochs=1",
    ]
    cmd = [sys.executable, "-m", "deepmim", "pretrain"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd + common + [f"train.output_dir={tmp_path / 'full'}"], check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cmd + common + [f"train.output_dir={killed}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and not _checkpoint_step_at_least(killed / "checkpoint-last.pt", 9):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(killed / "checkpoint-last.pt", weights_only=True)["step"]
    assert 9 <= step_at_kill < 48, "the kill must land mid-run"
    subprocess.run(
        cmd + common + [f"train.output_dir={killed}", "train.resume=auto"], check=True, env=env, capture_output=True
    )
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(killed))


def _checkpoint_step_at_least(path: Path, step: int) -> bool:
    try:
        return torch.load(path, weights_only=True)["step"] >= step
    except Exception:  # not written yet
        return False


def test_outputs_logs_plots_and_falling_loss(tmp_path):
    cfg = tiny_pretrain_config(tmp_path, epochs=6, tensorboard=True, plots=True)
    cfg.data.num_samples = 128
    cfg.optim.base_lr = 3e-3
    result = run_pretrain(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"]
    epochs = [r for r in rows if r["type"] == "epoch"]
    assert len(train) == result.step == 48 and len(epochs) == 6
    assert {"loss", "loss_block2", "loss_block4", "lr", "img_per_s", "epoch"} <= set(train[0])
    assert epochs[-1]["loss"] < 0.8 * epochs[0]["loss"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    for name in ("loss.png", "reconstruction.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert (tmp_path / "config.yaml").read_text().startswith("model:")
    model = load_checkpoint(tmp_path / "checkpoint-last.pt")
    assert model.blocks == [2, 4]


def _image_folder(root: Path, n_per_class: int = 10):
    """An ImageNet-style folder of 16px PNGs in odd modes (RGB, L, P, RGBA) plus one broken file."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "P", "RGBA"]
    for c in range(2):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(n_per_class):
            img = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).convert(modes[i % 4])
            img.save(folder / f"{i}.png")
    (root / "train" / "class0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")


def test_imagefolder_run_skips_broken_files_and_counts_them(tmp_path):
    _image_folder(tmp_path / "data")
    cfg = tiny_pretrain_config(tmp_path / "run", epochs=1, batch_size=7)
    cfg.data = DataConfig(name="imagefolder", path=str(tmp_path / "data"), img_size=16, num_workers=0)
    result = run_pretrain(cfg)
    assert result.finished and result.step == 3  # 21 files / batch 7
    epoch = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "epoch"
    ]
    assert epoch[0]["skipped_images"] == 1
    cfg.data.strict = True
    cfg.train.output_dir = str(tmp_path / "strict")
    with pytest.raises(Exception, match="broken.png"):
        run_pretrain(cfg)


def test_checkpoint_state_is_keyed_by_parameter_name_and_old_positional_optimizer_state_loads():
    from deepmim.training.parallel import full_state_dict, load_full_state_dict

    model = DeepMIM(tiny_model_config())
    optimizer = build_adamw(model, OptimConfig(), 1e-3, torch.device("cpu"))
    model(torch.randn(2, 3, 16, 16)).loss.backward()
    optimizer.step()
    model_state, optimizer_state = full_state_dict(model, optimizer)
    assert "encoder.blocks.0.attn.qkv.weight" in optimizer_state["state"]  # names, not positions
    for state in (optimizer_state, optimizer.state_dict()):  # the current and the positional format
        fresh = DeepMIM(tiny_model_config())
        fresh_opt = build_adamw(fresh, OptimConfig(), 1e-3, torch.device("cpu"))
        load_full_state_dict(fresh, fresh_opt, model_state, state)
        assert_same_weights(fresh.state_dict(), model.state_dict())
        a, b = optimizer.state_dict()["state"], fresh_opt.state_dict()["state"]
        assert sorted(a) == sorted(b) and all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)
