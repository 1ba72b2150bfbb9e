"""Never lose a run: one run per output folder, full batches past unreadable files, a divergence
guard that cannot overwrite good weights, one-paragraph messages instead of tracebacks, honest numbers."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepmim.checkpoint import LAST, PREV, find_resume_checkpoint, save_checkpoint
from deepmim.cli.main import main
from deepmim.config.loader import ConfigError
from deepmim.data import DataError
from deepmim.tasks.pretrain import load_pretrain_config, run_pretrain
from deepmim.tasks.run_folder import LOCK_FILE, OutputDirError, RunLock
from deepmim.training.guard import DivergenceError
from deepmim.training.loop import Trainer
from tests.conftest import save_tiny_pretrained
from tests.test_training import assert_same_weights, final_weights, tiny_pretrain_config

TINY = ["model.preset=mae_vit_micro_p4_32", "model.encoder.img_size=16", "model.encoder.depth=2",
        "model.heads.0.block=2", "data.img_size=16", "data.num_samples=64", "data.num_workers=0",
        "train.batch_size=16", "train.epochs=2", "train.precision=fp32", "train.device=cpu", "train.progress=false",
        "train.plots=false", "train.tensorboard=false", "optim.warmup_epochs=1"]


def rows(out: Path, kind: str):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def cli_error(capsys, *argv) -> str:
    """Run `deepmim argv`, expect exit code 2 and one paragraph on stderr; return it."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"deepmim {argv[0]}: error: ") and "Traceback" not in err
    assert "weights_only" not in err
    return err


# ---------------------------------------------------------------- 1. an output folder belongs to one run


def test_a_fresh_run_refuses_a_folder_with_a_run_and_overwrite_moves_it_aside(tmp_path):
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=1))
    before = {name: (tmp_path / name).read_bytes() for name in (LAST, "metrics.jsonl", "config.yaml")}
    with pytest.raises(OutputDirError, match=r"already holds a run \(checkpoint-last\.pt.*train\.resume=auto.*"
                                             r"train\.overwrite=true"):
        run_pretrain(tiny_pretrain_config(tmp_path, epochs=1, seed=5))
    assert {name: (tmp_path / name).read_bytes() for name in before} == before  # not a byte changed
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=1, seed=5, overwrite=True))
    aside = tmp_path / "replaced-1"
    assert {name: (aside / name).read_bytes() for name in before} == before  # moved, not deleted
    assert torch.load(tmp_path / LAST, weights_only=True)["config"]["train"]["seed"] == 5
    assert not (tmp_path / LOCK_FILE).exists()  # released at the end


def test_two_runs_cannot_both_write_a_folder_and_a_killed_holder_leaves_a_stale_lock(tmp_path):
    """Another process holds the folder (and has forked a child, as a DataLoader does): a run is refused with
    the holder's pid; once the holder is SIGKILLed its lock is stale, though the child lives on."""
    code = (f"import os, sys, time; from pathlib import Path; from deepmim.tasks.run_folder import RunLock; "
            f"RunLock.acquire(Path({str(tmp_path)!r})); child = os.fork()\n"
            f"if child == 0: time.sleep(60); os._exit(0)\n"
            f"print('locked', child, flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    child = None
    try:
        word, child = holder.stdout.readline().split()
        assert word == "locked"
        with pytest.raises(OutputDirError, match=rf"in use by another run \(pid {holder.pid} on "):
            run_pretrain(tiny_pretrain_config(tmp_path, epochs=1))
        assert not (tmp_path / LAST).exists() and not (tmp_path / "metrics.jsonl").exists()
        with pytest.raises(OutputDirError, match=rf"pid {holder.pid}"):  # also when taken after the early check
            RunLock.acquire(tmp_path)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert (tmp_path / LOCK_FILE).exists()  # a crash leaves the file; the kernel released the lock
        result = run_pretrain(tiny_pretrain_config(tmp_path, epochs=1))  # while the holder's child still lives
        assert result.finished and not (tmp_path / LOCK_FILE).exists()
    finally:
        holder.kill()
        holder.wait()
        if child is not None:
            os.kill(int(child), signal.SIGKILL)


def test_a_run_that_fails_lets_go_of_its_folder(tmp_path, monkeypatch):
    def fail(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", fail)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(tiny_pretrain_config(tmp_path, epochs=1))
    assert not (tmp_path / LOCK_FILE).exists()
    assert RunLock.holder(tmp_path) is None


def _readme_training_commands():
    """Every `deepmim pretrain|finetune|segment train` (and `make demo`) command in the README's code blocks."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("make demo"):  # the Makefile's `deepmim pretrain --config demo train.resume=auto`:
                commands.append(("pretrain", ["--config", "demo"]))  # the producer of runs/demo (fresh at first)
            for cmd in ("pretrain", "finetune", "segment train"):
                marker = f"deepmim {cmd} "
                if marker in line:
                    commands.append((cmd, shlex.split(line.split(marker, 1)[1])))
    return commands


def test_readme_examples_never_write_into_a_folder_another_example_reads():
    from deepmim.tasks.finetune import load_finetune_config
    from deepmim.tasks.segment import load_segment_config

    loaders = {"pretrain": load_pretrain_config, "finetune": load_finetune_config, "segment train": load_segment_config}
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    read = {os.path.dirname(p) for p in re.findall(r"runs/[\w./-]+\.(?:pt|safetensors)\b", text)}
    writers = {}
    for cmd, argv in _readme_training_commands():
        if "--print-config" in argv:
            continue
        recipe = argv[argv.index("--config") + 1]
        overrides = [a for a in argv if "=" in a and "$" not in a]  # $DATA etc.: the reader's own paths
        cfg = loaders[cmd](recipe, overrides)
        if cfg.train.resume is None:  # a fresh run (train.resume=auto continues the folder's own run)
            writers.setdefault(os.path.normpath(cfg.train.output_dir), set()).add(" ".join([cmd] + argv))
        if getattr(cfg.model, "checkpoint", None):
            read.add(os.path.dirname(os.path.normpath(cfg.model.checkpoint)))
    assert {"runs/demo", "runs/my_pretrain", "runs/my_finetune", "runs/my_segment"} <= read and len(writers) >= 4
    shared = {out: who for out, who in writers.items() if out in read and len(who) > 1}
    assert shared == {}, "a folder that README examples read is written by more than one example"
    assert writers["runs/demo"] == {"pretrain --config demo"}


# ---------------------------------------------------------------- 2. full batches past unreadable files


def _broken_image_folder(root: Path) -> Path:
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c in range(2):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (18, 18, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (root / "train" / "c0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    (root / "train" / "c1" / "empty.jpg").write_bytes(b"")
    (root / "train" / "c1" / "cut.png").write_bytes((root / "train" / "c1" / "0.png").read_bytes()[:60])
    return root


def test_a_mixup_finetune_over_broken_images_finishes_and_resumes_exactly(tmp_path):
    from deepmim.tasks.finetune import load_finetune_config, run_finetune

    data = _broken_image_folder(tmp_path / "data")
    pretrained = save_tiny_pretrained(tmp_path / "pre.pt")

    def cfg(out, *extra):  # 27 files (3 unreadable), batches of 6 with Mixup and CutMix: 4 steps an epoch
        return load_finetune_config("finetune_demo", [
            f"model.checkpoint={pretrained}", "data.name=imagefolder", f"data.path={data}", "data.img_size=16",
            "data.num_workers=0", "train.batch_size=6", "train.epochs=2", f"train.output_dir={out}",
            "train.progress=false", "train.tensorboard=false", "train.device=cpu", "train.precision=fp32",
            "train.log_every_steps=3", "augment.auto_augment=null", *extra])

    full = run_finetune(cfg(tmp_path / "full"))
    assert full.finished and full.step == 8
    epochs = rows(tmp_path / "full", "epoch")
    assert all(e["skipped_images"] >= 1 for e in epochs)  # counted (each epoch draws some of the 3 files)
    run_finetune(cfg(tmp_path / "part", "train.max_steps=3"))
    resumed = run_finetune(cfg(tmp_path / "part", "train.resume=auto"))
    assert resumed.finished and resumed.start_step == 3
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "part"))
    assert rows(tmp_path / "part", "epoch") == epochs
    assert [r["loss"] for r in rows(tmp_path / "part", "train")] == [r["loss"] for r in rows(tmp_path / "full", "train")]


# ---------------------------------------------------------------- 3. divergence cannot overwrite good weights


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
    with pytest.raises(DivergenceError, match=r"weights' norm grew .* between step 5 and step 6.*the last good "
                                              rf"checkpoint is {re.escape(str(tmp_path / LAST))} \(step 5\)"):
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
    with pytest.raises(DivergenceError, match=r"times its running average.*at step 5.*last good checkpoint is "
                                              r".*checkpoint-last\.pt \(step 2\)"):
        run_pretrain(cfg)
    assert torch.load(tmp_path / LAST, weights_only=True)["step"] == 2  # the state of step 4 was never written


def test_the_guard_can_be_turned_off_and_refuses_silly_factors(tmp_path, monkeypatch):
    _explode_after_step(monkeypatch, 2, scale=20.0)  # weights 20x in one step: more than the default factor
    with pytest.raises(DivergenceError, match="grew 20-fold"):
        run_pretrain(tiny_pretrain_config(tmp_path / "on", epochs=1))
    assert run_pretrain(tiny_pretrain_config(tmp_path / "off", epochs=1, divergence_factor=None)).finished
    with pytest.raises(ConfigError, match="train.divergence_factor must be above 1"):
        load_pretrain_config("demo", ["train.divergence_factor=0.5"])


def test_checkpoint_last_never_goes_missing_while_a_save_rotates_it(tmp_path, monkeypatch):
    import deepmim.checkpoint as ckpt

    save_checkpoint({"step": 1}, tmp_path)
    seen, real_replace = [], os.replace

    def watching_replace(src, dst):
        seen.append((tmp_path / LAST).is_file())  # a kill at any rename would find checkpoint-last.pt
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", watching_replace)
    save_checkpoint({"step": 2}, tmp_path)
    assert seen and all(seen)
    assert [torch.load(tmp_path / n, weights_only=True)["step"] for n in (LAST, PREV)] == [2, 1]
    assert not list(tmp_path.glob(".checkpoint-*.tmp"))
    monkeypatch.setattr(ckpt.os, "link", lambda *a: (_ for _ in ()).throw(OSError("no hard links here")))
    save_checkpoint({"step": 3}, tmp_path)  # the rename fallback
    assert [torch.load(tmp_path / n, weights_only=True)["step"] for n in (LAST, PREV)] == [3, 2]


def test_resume_takes_checkpoint_prev_when_checkpoint_last_is_missing(tmp_path):
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=2))
    assert torch.load(tmp_path / PREV, weights_only=True)["step"] == 4  # rotated at the second epoch's save
    (tmp_path / LAST).unlink()  # what a crash between the two renames of the no-hard-link fallback leaves
    assert find_resume_checkpoint(tmp_path, "auto") == tmp_path / PREV


# ---------------------------------------------------------------- 4. one paragraph instead of a traceback


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    assert main(["pretrain", *TINY, f"train.output_dir={out}"]) == 0
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in (LAST, PREV, "config.yaml", "metrics.jsonl"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_unreadable_checkpoints_under_resume_auto_end_in_one_paragraph(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    config_before = (run / "config.yaml").read_text()
    resume = ["pretrain", *TINY, f"train.output_dir={run}", "train.resume=auto"]
    (run / LAST).write_bytes((finished_run / LAST).read_bytes()[:300])  # cut short
    err = cli_error(capsys, *resume)
    assert f"'{run / LAST}'" in err and "damaged or cut short" in err and f"train.resume={run / PREV}" in err
    (run / LAST).write_bytes(os.urandom(5000))  # random bytes
    assert "not a readable PyTorch file" in cli_error(capsys, *resume)
    marker = tmp_path / "code-ran"

    class Hostile:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Hostile()}, run / LAST)
    err = cli_error(capsys, *resume)
    assert "is not a plain weights file" in err and "system" in err and not marker.exists()
    assert (run / "config.yaml").read_text() == config_before  # nothing written before the checkpoint was read


def test_resuming_another_architecture_names_the_config_keys_that_differ(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    err = cli_error(capsys, "pretrain", *TINY, f"train.output_dir={run}", "train.resume=auto",
                    "model.encoder.embed_dim=64", "model.encoder.num_heads=4")
    assert "holds another model than this run builds" in err and "model.encoder.embed_dim: 128 -> 64" in err
    assert len(err) < 700  # not a wall of shape mismatches


def test_output_dirs_that_cannot_be_used_end_in_one_paragraph(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    assert "is a file, not a folder" in cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path / 'afile'}")
    err = cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path / 'afile' / 'run'}")
    assert "cannot be created" in err and "is a file" in err
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only folder (root ignores chmod)
    assert "is read-only for this user" in cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path / 'ro'}")


def test_damaged_safetensors_end_in_one_paragraph(finished_run, tmp_path, capsys):
    assert main(["export", str(finished_run / LAST), "--out", str(tmp_path / "enc.safetensors")]) == 0
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "enc.safetensors").read_bytes()[:3000])
    (tmp_path / "random.safetensors").write_bytes(os.urandom(5000))
    for name in ("cut.safetensors", "random.safetensors"):
        err = cli_error(capsys, "export", str(tmp_path / name), "--out", str(tmp_path / "x.safetensors"))
        assert f"'{tmp_path / name}'" in err and "not a readable safetensors file" in err


# ---------------------------------------------------------------- 5. honest numbers and messages


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
        assert [{k: v for k, v in r.items() if k != "img_per_s"} for r in rows(tmp_path / "part", kind)] == \
            [{k: v for k, v in r.items() if k != "img_per_s"} for r in rows(tmp_path / "full", kind)]


def test_resuming_a_finished_run_says_so_honestly(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    metrics_before = (run / "metrics.jsonl").read_text()
    assert main(["pretrain", *TINY, f"train.output_dir={run}", "train.resume=auto"]) == 0
    captured = capsys.readouterr()
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith("pretrain: nothing trained, the run had already reached step 8, mean loss of the last "
                           "epoch ")
    assert "nan" not in last and "None" not in last and str(run / LAST) in last
    assert "holds the finished run (8 steps, all 2 epochs)" in captured.err
    assert (run / "metrics.jsonl").read_text() == metrics_before


def test_a_one_class_finetune_is_refused(tmp_path):
    from PIL import Image
    from deepmim.tasks.finetune import load_finetune_config, run_finetune

    for split in ("train", "val"):
        (tmp_path / "data" / split / "only").mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / "data" / split / "only" / f"{i}.png")
    cfg = load_finetune_config("finetune_demo", [
        f"model.checkpoint={save_tiny_pretrained(tmp_path / 'pre.pt')}", "data.name=imagefolder",
        f"data.path={tmp_path / 'data'}", "data.img_size=16", "data.num_workers=0", "train.batch_size=2",
        f"train.output_dir={tmp_path / 'run'}", "train.device=cpu"])
    with pytest.raises(ConfigError, match=r"1 class \(only\).*100% top-1"):
        run_finetune(cfg)
    assert not (tmp_path / "run").exists()


def test_data_path_on_embedded_data_is_an_error():
    with pytest.raises(DataError, match=r"data\.path='/data/imagenet' is set, but data\.name=embedded"):
        load_pretrain_config("demo", ["data.path=/data/imagenet"])


def test_temp_files_of_an_interrupted_write_are_removed_on_start(tmp_path):
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=1))
    stale = tmp_path / ".checkpoint-last.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=2, resume="auto"))
    assert not stale.exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size must be at least 1"),
    ("model.mask_ratio=1.0", r"model.mask_ratio must be in \(0, 1\)"),
    ("model.heads.0.block=9", r"model.heads.0.block = 9 is outside 1..6"),
    ("train.precision=fp8", "train.precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
    ("optim.base_lr=-1", "optim.base_lr must be a positive learning rate, got -1.0"),
    ("optim.lr=0", "optim.lr must be a positive learning rate"),
])
def test_print_config_refuses_the_values_a_run_would(override, message, capsys):
    assert re.search(message, cli_error(capsys, "pretrain", "--config", "demo", override, "--print-config"))


def test_a_negative_lr_stops_before_any_file_is_written(tmp_path, capsys):
    err = cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path / 'run'}", "optim.base_lr=-1")
    assert "optim.base_lr" in err and not (tmp_path / "run").exists()
    err = cli_error(capsys, "finetune", "--config", "finetune_demo", "train.batch_size=0", "--print-config")
    assert "train.batch_size must be at least 1" in err


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_checkpoints_and_exports_follow_the_umask(finished_run, tmp_path, umask, mode):
    from deepmim.checkpoint import atomic_save
    from deepmim.tasks.export import export_checkpoint

    old = os.umask(umask)
    try:
        atomic_save({"x": torch.zeros(1)}, tmp_path / "c.pt")
        export_checkpoint(str(finished_run / LAST), str(tmp_path / "e.safetensors"))
    finally:
        os.umask(old)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "e.safetensors").stat().st_mode & 0o777 == mode
    assert (finished_run / LAST).stat().st_mode & 0o777 == 0o666 & ~old
