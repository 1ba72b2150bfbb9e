"""One run per output folder: the lock (it survives a deleted lock file and a killed holder), folders that
cannot be used, temp files of an interrupted write, and nothing written before a config is refused."""

import errno
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepmim.checkpoint import LAST
from deepmim.cli.main import main
from deepmim.tasks.pretrain import load_pretrain_config, run_pretrain
from deepmim.tasks.run_folder import LOCK_FILE, OutputDirError, RunLock
from deepmim.training.loop import Trainer
from tests.helpers.cli import cli_error, traceback_free_cli_error
from tests.helpers.runs import TINY, tiny_pretrain_config


def test_deleting_the_lock_file_does_not_let_a_second_run_in(tmp_path):
    lock = RunLock.acquire(tmp_path)
    try:
        (tmp_path / LOCK_FILE).unlink()  # what `rm OUT/.deepmim.lock` during a run does
        with pytest.raises(OutputDirError, match=rf"in use by another run \(a process whose {LOCK_FILE} was deleted"):
            run_pretrain(tiny_pretrain_config(tmp_path, epochs=1, resume="auto"))
        with pytest.raises(OutputDirError, match="in use by another run"):  # also when taken after the early check
            RunLock.acquire(tmp_path)
        assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / LAST).exists()
    finally:
        lock.release()
    assert RunLock.holder(tmp_path) is None
    assert run_pretrain(tiny_pretrain_config(tmp_path, epochs=1, resume="auto")).finished  # free once released


@pytest.mark.parametrize("name", ["config.yaml", "metrics.jsonl"])
def test_a_fresh_run_refuses_a_folder_with_any_run_file(tmp_path, capsys, name):
    (tmp_path / name).write_text("mine\n")
    err = traceback_free_cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path}")
    assert f"already holds a run ({name})" in err and "train.overwrite=true" in err
    assert (tmp_path / name).read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert main(["pretrain", *TINY, f"train.output_dir={tmp_path}", "train.overwrite=true"]) == 0
    assert (tmp_path / "replaced-1" / name).read_text() == "mine\n"  # moved aside, not lost


def test_a_full_disk_at_the_start_names_the_file(tmp_path, capsys, monkeypatch):
    real_write_text = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "config.yaml":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a failed write names no file
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    err = traceback_free_cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path / 'run'}")
    assert f"no space left on the disk while writing '{tmp_path / 'run' / 'config.yaml'}'" in err
    assert "check that the path exists" not in err


def test_an_output_folder_deleted_mid_run_is_named(tmp_path, capsys, monkeypatch):
    real_step = Trainer.optimizer_step

    def step_then_delete(self):
        real_step(self)
        if self.step == 2:
            shutil.rmtree(self.output_dir)

    monkeypatch.setattr(Trainer, "optimizer_step", step_then_delete)
    err = traceback_free_cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path / 'run'}")
    assert f"its folder '{tmp_path / 'run'}' no longer exists (deleted or moved while the command ran?)" in err


def test_a_fresh_run_refuses_a_folder_with_a_run_and_overwrite_moves_it_aside(tmp_path):
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=1))
    before = {name: (tmp_path / name).read_bytes() for name in (LAST, "metrics.jsonl", "config.yaml")}
    with pytest.raises(
        OutputDirError,
        match=r"already holds a run \(checkpoint-last\.pt.*train\.resume=auto.*"
        r"train\.overwrite=true",
    ):
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
    code = (
        f"import os, sys, time; from pathlib import Path; from deepmim.tasks.run_folder import RunLock; "
        f"RunLock.acquire(Path({str(tmp_path)!r})); child = os.fork()\n"
        f"if child == 0: time.sleep(60); os._exit(0)\n"
        f"print('locked', child, flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
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
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
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
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
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


def test_output_dirs_that_cannot_be_used_end_in_one_paragraph(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    assert "is a file, not a folder" in cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path / 'afile'}")
    err = cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path / 'afile' / 'run'}")
    assert "cannot be created" in err and "is a file" in err
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only folder (root ignores chmod)
    assert "is read-only for this user" in cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path / 'ro'}")


def test_temp_files_of_an_interrupted_write_are_removed_on_start(tmp_path):
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=1))
    stale = tmp_path / ".checkpoint-last.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=2, resume="auto"))
    assert not stale.exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_negative_lr_stops_before_any_file_is_written(tmp_path, capsys):
    err = cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path / 'run'}", "optim.base_lr=-1")
    assert "optim.base_lr" in err and not (tmp_path / "run").exists()
    err = cli_error(capsys, "finetune", "--config", "finetune_demo", "train.batch_size=0", "--print-config")
    assert "train.batch_size must be at least 1" in err
