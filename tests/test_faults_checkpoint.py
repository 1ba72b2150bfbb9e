"""Checkpoint files under fault: resuming from checkpoint-prev.pt keeps it, weights of the wrong dtype or
with NaN are refused on load and export, a full disk during a write and damaged metadata end in one
paragraph (exit code 2), and nothing of the run is lost."""
import errno
import os
from pathlib import Path

import pytest
import torch

from deepmim.checkpoint import LAST, PREV, SET_ASIDE, CheckpointError, save_checkpoint
from deepmim.cli.main import main
from deepmim.models import create_model
from deepmim.models.export import encoder_state_dict
from deepmim.models.loading import load_checkpoint
from deepmim.tasks.pretrain import run_pretrain
from tests.test_training import tiny_pretrain_config


def cli_error(capsys, *argv) -> str:
    """Run `deepmim argv`, expect exit code 2 and one paragraph on stderr; return it."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(f"deepmim {argv[0]}: error: ")
    return err[0]


def steps(out: Path, *names: str):
    return [torch.load(out / name, weights_only=True)["step"] for name in names]


def test_resuming_from_checkpoint_prev_keeps_it_and_sets_the_damaged_last_aside(tmp_path):
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=2))
    assert steps(tmp_path, LAST, PREV) == [8, 4]
    damaged = (tmp_path / LAST).read_bytes()[:300]
    (tmp_path / LAST).write_bytes(damaged)
    prev_bytes = (tmp_path / PREV).read_bytes()
    with pytest.raises(CheckpointError, match=rf"train\.resume={tmp_path / PREV}"):  # what the message suggests
        run_pretrain(tiny_pretrain_config(tmp_path, epochs=2, resume="auto"))
    result = run_pretrain(tiny_pretrain_config(tmp_path, epochs=2, resume=str(tmp_path / PREV), max_steps=6))
    assert (result.start_step, result.step) == (4, 6)
    assert (tmp_path / PREV).read_bytes() == prev_bytes  # the file the run resumed from: intact
    assert (tmp_path / SET_ASIDE).read_bytes() == damaged  # the one it did not resume from: kept, not lost
    assert steps(tmp_path, LAST) == [6]
    run_pretrain(tiny_pretrain_config(tmp_path, epochs=2, resume="auto"))  # later saves rotate as always
    assert steps(tmp_path, LAST, PREV) == [8, 6]


def _bare_encoder(tmp_path: Path, change=None) -> Path:
    """mae_vit_micro_p4_32's encoder as bare safetensors weights (timm names, no config), `change`d."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in encoder_state_dict(create_model("mae_vit_micro_p4_32")).items()}
    if change:
        change(state)
    path = tmp_path / "bare.safetensors"
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.complex64])
def test_weights_that_are_not_floats_are_refused_on_export_and_load(tmp_path, capsys, dtype):
    def to_dtype(state):
        state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"].to(dtype)

    bare = _bare_encoder(tmp_path, to_dtype)
    err = cli_error(capsys, "export", str(bare), "--preset", "mae_vit_micro_p4_32", "--out", str(tmp_path / "x.st"))
    name = str(dtype).replace("torch.", "")
    assert f"blocks.0.attn.qkv.weight ({name})" in err and f"'{bare}'" in err and "not floating point" in err
    assert not (tmp_path / "x.st").exists()
    run_pretrain(tiny_pretrain_config(tmp_path / "run", epochs=1))  # a deepmim checkpoint with an int tensor
    ckpt = torch.load(tmp_path / "run" / LAST, weights_only=True)
    ckpt["model"]["encoder.patch_embed.proj.weight"] = ckpt["model"]["encoder.patch_embed.proj.weight"].to(dtype)
    torch.save(ckpt, tmp_path / "int.pt")
    with pytest.raises(CheckpointError, match=rf"encoder\.patch_embed\.proj\.weight \({name}\)"):
        load_checkpoint(tmp_path / "int.pt")


def test_weights_holding_nan_are_refused_on_export_and_resume(tmp_path, capsys):
    def poison(state):
        state["blocks.1.mlp.fc1.weight"][0, 0] = float("nan")

    bare = _bare_encoder(tmp_path, poison)
    err = cli_error(capsys, "export", str(bare), "--preset", "mae_vit_micro_p4_32", "--out", str(tmp_path / "x.st"))
    assert "blocks.1.mlp.fc1.weight" in err and "NaN or inf" in err and not (tmp_path / "x.st").exists()
    good = _bare_encoder(tmp_path)
    assert main(["export", str(good), "--preset", "mae_vit_micro_p4_32", "--out", str(tmp_path / "x.st")]) == 0
    run_pretrain(tiny_pretrain_config(tmp_path / "run", epochs=1))
    ckpt = torch.load(tmp_path / "run" / LAST, weights_only=True)
    ckpt["model"]["encoder.cls_token"][..., 0] = float("inf")
    torch.save(ckpt, tmp_path / "run" / LAST)
    with pytest.raises(CheckpointError, match=r"checkpoint-last\.pt.*NaN or inf.*encoder\.cls_token.*Cannot resume"):
        run_pretrain(tiny_pretrain_config(tmp_path / "run", epochs=2, resume="auto"))


@pytest.mark.parametrize("config", ["{not json", "[1, 2]"])
def test_malformed_safetensors_metadata_names_the_file(tmp_path, capsys, config):
    from safetensors.torch import save_file

    path = tmp_path / "classifier.safetensors"
    save_file({"head.weight": torch.zeros(2, 2)}, str(path), metadata={"task": "finetune", "config": config})
    err = cli_error(capsys, "evaluate", str(path))
    assert f"cannot read checkpoint '{path}': its safetensors metadata 'config' is" in err
    assert "Export the checkpoint again" in err


def test_a_failed_write_names_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import deepmim.checkpoint as ckpt

    save_checkpoint({"step": 1}, tmp_path)

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a failed f.write raises it: no file named

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError) as caught:
        save_checkpoint({"step": 2}, tmp_path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / LAST)
    monkeypatch.undo()
    assert steps(tmp_path, LAST) == [1] and not (tmp_path / PREV).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST]
