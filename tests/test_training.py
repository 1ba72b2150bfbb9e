import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepmim import checkpoint as ckpt_mod
from deepmim.checkpoint import atomic_save
from deepmim.config.schema import DataConfig, OptimConfig, PretrainConfig, TrainConfig
from deepmim.models import DeepMIM, load_checkpoint
from deepmim.training.guard import DivergenceError
from deepmim.training.optim import build_adamw, scaled_lr
from deepmim.training.schedule import warmup_cosine_lr
from deepmim.tasks.pretrain import run_pretrain
from tests.conftest import tiny_model_config


def tiny_pretrain_config(out: Path, **train) -> PretrainConfig:
    """16px embedded shapes, 64 images, batch 16: 4 steps an epoch, a second or two per run. Torch's thread
    count stays fixed (adapt_threads=False): tests compare runs bit for bit, whatever else the machine runs."""
    defaults = dict(epochs=2, batch_size=16, output_dir=str(out), log_every_steps=1, progress=False,
                    tensorboard=False, plots=False, precision="fp32", device="cpu", seed=3, adapt_threads=False)
    defaults.update(train)
    return PretrainConfig(
        model=tiny_model_config(),
        data=DataConfig(name="embedded", img_size=16, num_samples=64, num_workers=0),
        optim=OptimConfig(base_lr=1e-3, warmup_epochs=1),
        train=TrainConfig(**defaults),
    )


def final_weights(out: Path):
    return torch.load(out / "checkpoint-last.pt", weights_only=True)["model"]


def assert_same_weights(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------ optimizer and schedule

def test_schedule_warmup_then_half_cosine():
    lr = lambda s: warmup_cosine_lr(s, total_steps=100, warmup_steps=10, peak_lr=1.0, min_lr=0.1)
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.5)
    assert lr(10) == pytest.approx(1.0)
    assert lr(55) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lr(100) == pytest.approx(0.1)
    values = [lr(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lr_scales_with_effective_batch():
    assert scaled_lr(OptimConfig(base_lr=1.5e-4), 4096) == pytest.approx(2.4e-3)
    assert scaled_lr(OptimConfig(base_lr=1.5e-4, lr=1e-3), 4096) == 1e-3


def test_weight_decay_skips_biases_norms_tokens_and_pos_embed():
    model = DeepMIM(tiny_model_config())
    opt = build_adamw(model, OptimConfig(weight_decay=0.05), lr=1e-3, device=torch.device("cpu"))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[i] for i in decayed}
    all_trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "encoder.blocks.0.attn.qkv.weight" in decayed_names
    assert "decoders.2.embed.weight" in decayed_names
    for name in all_trainable - decayed_names:
        assert name.endswith(("bias", "cls_token", "mask_token")) or ".norm" in name, name
    assert not any(n.endswith(("bias", "cls_token", "mask_token")) for n in decayed_names)
    assert not any(n.startswith("encoder.pos_embed") or ".pos_embed" in n for n in decayed_names | all_trainable)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


# ------------------------------------------------------------------ checkpoints

def test_atomic_save_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_save({"x": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"x": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp files left behind


# ------------------------------------------------------------------ end to end

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
    first = run_pretrain(tiny_pretrain_config(part, epochs=3, accum_steps=2, batch_size=8, max_steps=5,
                                              precision=precision))
    assert first.step == 5 and not first.finished
    second = run_pretrain(tiny_pretrain_config(part, epochs=3, accum_steps=2, batch_size=8, resume="auto",
                                               precision=precision))
    assert second.finished and second.step == 12
    assert_same_weights(final_weights(full), final_weights(part))
    # the log of the resumed run reads like the uninterrupted one
    rows = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                      if r["type"] == "train"]
    assert rows(full) == rows(part)


@pytest.mark.slow
def test_killed_process_resumes_to_identical_weights(tmp_path):
    """SIGKILL a real `deepmim pretrain` process mid-run, resume it, compare with an uninterrupted run."""
    common = ["model.preset=mae_vit_micro_p4_32", "model.encoder.img_size=16", "model.encoder.depth=2", "model.heads.0.block=2",
              "data.img_size=16", "data.num_samples=256", "data.num_workers=0", "train.batch_size=16",
              "train.epochs=3", "train.save_every_steps=3", "train.precision=fp32", "train.device=cpu",
              "train.progress=false", "train.plots=false", "train.tensorboard=false", "optim.warmup_epochs=1"]
    cmd = [sys.executable, "-m", "deepmim", "pretrain"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd + common + [f"train.output_dir={tmp_path / 'full'}"], check=True, env=env,
                   capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + common + [f"train.output_dir={killed}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not _checkpoint_step_at_least(killed / "checkpoint-last.pt", 9):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(killed / "checkpoint-last.pt", weights_only=True)["step"]
    assert 9 <= step_at_kill < 48, "the kill must land mid-run"
    subprocess.run(cmd + common + [f"train.output_dir={killed}", "train.resume=auto"], check=True, env=env,
                   capture_output=True)
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(killed))


def _checkpoint_step_at_least(path: Path, step: int) -> bool:
    try:
        return torch.load(path, weights_only=True)["step"] >= step
    except Exception:  # not written yet
        return False


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
    from PIL import Image
    import numpy as np

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
    epoch = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["type"] == "epoch"]
    assert epoch[0]["skipped_images"] == 1
    cfg.data.strict = True
    cfg.train.output_dir = str(tmp_path / "strict")
    with pytest.raises(Exception, match="broken.png"):
        run_pretrain(cfg)


def test_forced_bf16_on_cpu_trains_close_to_fp32(tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_pretrain_config(tmp_path / precision, epochs=1, precision=precision, max_steps=1)
        run_pretrain(cfg)
        rows = [json.loads(l) for l in (tmp_path / precision / "metrics.jsonl").read_text().splitlines()]
        losses[precision] = rows[0]["loss"]
    assert math.isfinite(losses["bf16"])
    assert abs(losses["bf16"] - losses["fp32"]) / losses["fp32"] < 2e-2



@pytest.mark.parametrize("slow_kernel", ["fused", "math"])
def test_attention_kernel_is_chosen_by_timing(slow_kernel):
    from deepmim.training.precision import fastest_attention

    state = {"fused": None}

    def step():
        current = "fused" if state["fused"] else "math"
        time.sleep(0.03 if current == slow_kernel else 0.001)

    fused, best = fastest_attention(step, lambda on: state.update(fused=on), torch.device("cpu"))
    assert fused == (slow_kernel == "math") and state["fused"] == fused  # left set to the winner
    assert best[slow_kernel] > 0.02 > best["math" if slow_kernel == "fused" else "fused"]


def test_measured_attention_is_recorded_and_reused_on_resume(tmp_path, monkeypatch):
    import deepmim.tasks.pretrain as pretrain_task

    calls = []
    monkeypatch.setattr(pretrain_task, "measure_attention", lambda *a: calls.append(1) or "math")
    cfg = tiny_pretrain_config(tmp_path, epochs=2, max_steps=4)
    cfg.model.attn_impl = "measure"
    run_pretrain(cfg)
    assert calls == [1]
    assert torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)["config"]["model"]["attn_impl"] == "math"
    assert "attn_impl: math" in (tmp_path / "config.yaml").read_text()
    cfg = tiny_pretrain_config(tmp_path, epochs=2, resume="auto")
    cfg.model.attn_impl = "measure"
    run_pretrain(cfg)
    assert calls == [1]  # not measured again: the recorded kernel keeps the resumed run exact


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
