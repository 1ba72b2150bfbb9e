"""Training runs under fault: the guard vouches for a run's last checkpoint too, a run folder stays one
run's (its lock survives a deleted lock file; a fresh run refuses any run file), torchrun groups time out,
and faults during a run end in one paragraph with exit code 2 and nothing lost."""
import dataclasses
import errno
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from deepmim.checkpoint import LAST
from deepmim.cli.main import main
from deepmim.config.schema import TrainConfig
from deepmim.tasks.pretrain import run_pretrain
from deepmim.tasks.run_folder import LOCK_FILE, OutputDirError, RunLock
from deepmim.training.env import Env
from deepmim.training.guard import DivergenceError
from deepmim.training.loop import TaskSpec, TrainData, Trainer, TrainModel
from tests.test_training import tiny_pretrain_config

TINY = ["model.preset=mae_vit_micro_p4_32", "model.encoder.img_size=16", "model.encoder.depth=2",
        "model.heads.0.block=2", "data.img_size=16", "data.num_samples=64", "data.num_workers=0",
        "train.batch_size=16", "train.epochs=2", "train.precision=fp32", "train.device=cpu", "train.progress=false",
        "train.plots=false", "train.tensorboard=false", "optim.warmup_epochs=1"]


def cli_error(capsys, *argv) -> str:
    """Run `deepmim argv`, expect exit code 2 and one paragraph on stderr; return it."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and err[-1].startswith(f"deepmim {argv[0]}: error: ")
    return err[-1]


def with_lr(cfg, base_lr: float):
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, base_lr=base_lr))


def test_the_last_step_of_a_run_is_checked_before_its_checkpoint_is_written(tmp_path):
    """A resumed run whose last step wrecks the weights (lr 20) stops without writing them: the loss of
    the final weights is 100x the running average, and the checkpoint it names as good is the step before."""
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=3, max_steps=4, log_every_steps=2))
    before = (tmp_path / LAST).read_bytes()
    wrecked = with_lr(tiny_pretrain_config(tmp_path, epochs=3, max_steps=5, resume="auto", log_every_steps=2), 20.0)
    with pytest.raises(DivergenceError, match=r"times its running average.*from the final weights of step 5.*"
                                              rf"last good checkpoint is {re.escape(str(tmp_path / LAST))} \(step 4\)"):
        run_pretrain(wrecked)
    assert (tmp_path / LAST).read_bytes() == before  # step 5's weights never reached the disk
    result = run_pretrain(tiny_pretrain_config(tmp_path, epochs=3, max_steps=5, resume="auto", log_every_steps=2))
    assert (result.start_step, result.step) == (4, 5)  # a sound last step is written as before
    assert torch.load(tmp_path / LAST, weights_only=True)["step"] == 5


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
    err = cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path}")
    assert f"already holds a run ({name})" in err and "train.overwrite=true" in err
    assert (tmp_path / name).read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert main(["pretrain", *TINY, f"train.output_dir={tmp_path}", "train.overwrite=true"]) == 0
    assert (tmp_path / "replaced-1" / name).read_text() == "mine\n"  # moved aside, not lost


def test_a_full_disk_during_a_checkpoint_write_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """torch.save's zip writer hides ENOSPC behind 'unexpected pos'; the message says the disk is full, names
    the file, and the checkpoint before stays as it was, with no temp file left."""
    import deepmim.checkpoint as ckpt

    assert main(["pretrain", *TINY, "train.epochs=1", f"train.output_dir={tmp_path}"]) == 0
    before = (tmp_path / LAST).read_bytes()
    real_save = torch.save

    def full_disk_save(obj, f):
        f.write(b"PK\x03\x04" + b"\0" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4480 vs 4374")

    monkeypatch.setattr(ckpt.torch, "save", full_disk_save)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: usage._replace(free=4096))
    capsys.readouterr()
    err = cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path}", "train.resume=auto")
    assert f"no space left on the disk while writing '{tmp_path / LAST}'" in err and "train.resume=auto" in err
    assert (tmp_path / LAST).read_bytes() == before and not list(tmp_path.glob(".checkpoint-*.tmp"))
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert main(["pretrain", *TINY, f"train.output_dir={tmp_path}", "train.resume=auto"]) == 0  # space freed


def test_a_full_disk_at_the_start_names_the_file(tmp_path, capsys, monkeypatch):
    real_write_text = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == "config.yaml":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a failed write names no file
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    err = cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path / 'run'}")
    assert f"no space left on the disk while writing '{tmp_path / 'run' / 'config.yaml'}'" in err
    assert "check that the path exists" not in err


def test_an_output_folder_deleted_mid_run_is_named(tmp_path, capsys, monkeypatch):
    real_step = Trainer.optimizer_step

    def step_then_delete(self):
        real_step(self)
        if self.step == 2:
            shutil.rmtree(self.output_dir)

    monkeypatch.setattr(Trainer, "optimizer_step", step_then_delete)
    err = cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path / 'run'}")
    assert f"its folder '{tmp_path / 'run'}' no longer exists (deleted or moved while the command ran?)" in err


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

    train = TrainConfig(epochs=2, batch_size=2, output_dir=str(tmp_path), progress=False, tensorboard=False,
                        plots=False, log_every_steps=1, device="cpu", precision="fp32")
    trainer = Trainer(TrainModel(torch.nn.Linear(3, 3)), TrainData(ShortLoader()),
                      TaskSpec("pretrain", train, OptimConfig(warmup_epochs=0), loss), Env(torch.device("cpu"), "fp32"))
    with pytest.raises(ValueError, match=r"the data ran out after 2 of the 4 steps of epoch 0"):
        trainer.fit()
    assert trainer.step == 2


FROZEN_RANK = """
import os, sys, time, torch
from deepmim.training.distributed import all_reduce_sum, setup_distributed
from deepmim.cli.errors import collective_timeout_message, is_collective_timeout
device, rank, world_size = setup_distributed(torch.device("cpu"), timeout=2.0)
if rank == 1:
    os.kill(os.getpid(), __import__("signal").SIGSTOP)  # frozen, as by kill -STOP
start = time.perf_counter()
try:
    all_reduce_sum(torch.ones(1))
except RuntimeError as err:
    print(round(time.perf_counter() - start), is_collective_timeout(err), collective_timeout_message(err), flush=True)
    os._exit(2)
"""


@pytest.mark.slow
def test_a_frozen_rank_ends_the_others_after_train_dist_timeout(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", FROZEN_RANK], env={**env, "RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        out, err = procs[0].communicate(timeout=60)
        seconds, timed_out, message = out.split(" ", 2)
        assert procs[0].returncode == 2 and timed_out == "True" and int(seconds) <= 5
        assert message.startswith("this process waited longer than train.dist_timeout") and "Timed out" in message
    finally:
        procs[1].kill()
        procs[1].wait()


def test_train_dist_timeout_reaches_the_process_group(tmp_path, monkeypatch):
    import deepmim.tasks.base as base
    from deepmim.training import distributed

    seen = []
    real = base.setup_distributed
    monkeypatch.setattr(base, "setup_distributed", lambda device, timeout=None: seen.append(timeout) or real(device))
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=1, dist_timeout=42.0))
    assert seen == [42.0]
    distributed.init_distributed(torch.device("cpu"), 42.0)
    assert distributed._TIMEOUT.total_seconds() == 42.0
    assert TrainConfig().dist_timeout == distributed.DEFAULT_TIMEOUT == 600.0
