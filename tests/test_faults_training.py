"""Training runs under fault: the guard vouches for a run's last checkpoint too, a run folder stays one
run's (its lock survives a deleted lock file; a fresh run refuses any run file), torchrun groups time out,
and faults during a run end in one paragraph with exit code 2 and nothing lost."""
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from deepmim.checkpoint import LAST
from deepmim.cli.main import main
from deepmim.tasks.pretrain import run_pretrain
from deepmim.tasks.run_folder import LOCK_FILE, OutputDirError, RunLock
from deepmim.training.guard import DivergenceError
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
