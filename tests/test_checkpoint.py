"""deepmim.checkpoint: every kind of checkpoint round-trips through its record (the built-in tasks and
a dummy task registered here); files are written atomically, rotated without a gap, follow the umask, and
a damaged, missing or foreign checkpoint ends in one paragraph (exit code 2) with nothing of the run lost."""

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import timm
import torch
from torch import nn

from deepmim import checkpoint as ckpt_mod
from deepmim.checkpoint import (
    LAST,
    PREV,
    SET_ASIDE,
    CheckpointError,
    TaskKind,
    atomic_save,
    find_resume_checkpoint,
    make_checkpoint,
    read_checkpoint,
    register_task_kind,
    save_checkpoint,
    task_kinds,
    unregister_task_kind,
)
from deepmim.cli.main import main
from deepmim.config.loader import to_dict
from deepmim.config.schema import FeatureConfig, LinearProbeConfig, LinprobeConfig
from deepmim.models import create_model
from deepmim.models.classifier import trained_classifier
from deepmim.models.export import encoder_state_dict
from deepmim.models.loading import load_checkpoint
from deepmim.tasks.base import load_trained, task_hook
from deepmim.tasks.finetune import load_classifier, load_finetune_config, run_evaluate, run_finetune
from deepmim.tasks.linprobe import run_linprobe
from deepmim.tasks.pretrain import load_pretrain_config, run_pretrain
from deepmim.tasks.segment import load_segment_config, load_segmentor, run_segment_eval, run_segment_train
from tests.helpers.cli import cli_error, single_line_cli_error, traceback_free_cli_error
from tests.helpers.data import tiny_data
from tests.helpers.runs import TINY, copy_run, tiny_pretrain_config, tiny_segment_overrides

COMMON = ["train.progress=false", "train.tensorboard=false", "train.device=cpu", "train.precision=fp32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One checkpoint of each kind, each written by its task."""
    tmp = tmp_path_factory.mktemp("kinds")
    pre = run_pretrain(
        load_pretrain_config(
            None,
            [
                "model.preset=deepmim_pixel_vit_micro_p4_32",
                "model.encoder.img_size=16",
                "model.encoder.depth=4",
                "model.heads.0.block=1",
                "model.heads.1.block=2",
                "model.heads.2.block=3",
                "model.heads.3.block=4",
                "data.img_size=16",
                "data.num_samples=32",
                "data.num_workers=0",
                "train.batch_size=8",
                "train.epochs=2",
                "train.max_steps=5",
                "train.plots=false",
                f"train.output_dir={tmp / 'pre'}",
                *COMMON,
            ],
        )
    )
    ft = run_finetune(
        load_finetune_config(
            "finetune_demo",
            [
                f"model.checkpoint={pre.checkpoint}",
                "data.img_size=16",
                "data.num_samples=40",
                "data.num_workers=0",
                "train.batch_size=8",
                "train.epochs=1",
                "train.max_steps=2",
                f"train.output_dir={tmp / 'ft'}",
                *COMMON,
            ],
        )
    )
    seg, _ = run_segment_train(
        load_segment_config(
            "upernet_demo",
            [
                *tiny_segment_overrides(pre.checkpoint, tmp / "seg"),
                "data.val_samples=3",
                "train.batch_size=4",
                "train.iterations=2",
                "optim.warmup_iters=1",
            ],
        )
    )
    lp_cfg = LinprobeConfig(
        data=tiny_data(20),
        features=FeatureConfig(cache_dir=None, progress=False, pool="cls"),
        probe=LinearProbeConfig(epochs=1, warmup_epochs=1, batch_size=8),
        augment=False,
    )
    run_linprobe(str(pre.checkpoint), lp_cfg, str(tmp / "lp"))
    return {
        "tmp": tmp,
        "pretrain": pre.checkpoint,
        "finetune": ft.checkpoint,
        "segment": seg.checkpoint,
        "linprobe": tmp / "lp" / "probe-head.pt",
    }


def without_task(path: Path, out: Path, keep_config: bool = True) -> Path:
    """The same checkpoint without its `task` key (`keep_config=False`: without its config too)."""
    obj = torch.load(path, weights_only=True)
    dropped = ("task",) if keep_config else ("task", "config")
    torch.save({k: v for k, v in obj.items() if k not in dropped}, out)
    return out


def test_each_kind_reads_back_as_itself(runs):
    for kind in ("pretrain", "finetune", "segment", "linprobe"):
        ckpt = read_checkpoint(runs[kind])
        assert ckpt.task == kind, runs[kind]
        assert "architecture" not in ckpt.config
        expected = torch.load(runs[kind], weights_only=True)
        assert sorted(ckpt.model_state) == sorted(expected["head" if kind == "linprobe" else "model"])
    pre = read_checkpoint(runs["pretrain"])
    assert (pre.step, pre.epoch) == (5, 1) and [h.block for h in pre.model_config().heads] == [1, 2, 3, 4]
    ft = read_checkpoint(runs["finetune"])
    assert ft.architecture["num_classes"] == 10 and ft.architecture["encoder"]["depth"] == 4
    seg = read_checkpoint(runs["segment"])
    assert seg.architecture["classes"][0] == "background" and seg.config["model"]["channels"] == 16


def test_a_file_without_its_task_is_refused_saying_how_to_add_it(runs, tmp_path):
    for kind in ("pretrain", "finetune", "segment", "linprobe"):
        for keep_config in (True, False):
            path = without_task(runs[kind], tmp_path / f"{kind}-{keep_config}.pt", keep_config)
            if not keep_config and kind != "linprobe":
                assert read_checkpoint(path).task is None  # weights alone: bare weights, as MAE's releases
                continue
            with pytest.raises(CheckpointError) as refused:
                read_checkpoint(path)
            message = str(refused.value)
            assert message.startswith(
                f"'{path}' holds a deepmim run's {'config' if keep_config else 'probe head'} but no `task` key"
            ), message
            assert "ckpt['task'] = 'pretrain' (or the kind it is: pretrain, finetune, segment, linprobe)" in message


def test_pretrained_checkpoint_loads_and_exports_its_encoder_to_timm(runs, tmp_path):
    model = load_checkpoint(runs["pretrain"])
    state = torch.load(runs["pretrain"], weights_only=True)["model"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    out = tmp_path / "encoder.safetensors"
    assert main(["export", str(runs["pretrain"]), "--out", str(out)]) == 0
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=16,
        patch_size=4,
        embed_dim=128,
        depth=4,
        num_heads=4,
        num_classes=0,
        checkpoint_path=str(out),
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), model.eval().encoder.forward_features(x))
    assert read_checkpoint(out).task is None  # an exported encoder is bare weights (loadable with a preset)


def test_finetuned_checkpoint_exports_and_the_export_evaluates_the_same(runs, tmp_path):
    out = tmp_path / "classifier.safetensors"
    assert main(["export", str(runs["finetune"]), "--out", str(out)]) == 0
    assert read_checkpoint(out).task == "finetune"
    model, _ = load_classifier(runs["finetune"])
    again, _ = load_classifier(out)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    assert run_evaluate(str(out)) == run_evaluate(str(runs["finetune"]))


def test_segmentation_checkpoint_exports_and_the_export_scores_the_same(runs, tmp_path):
    """The bug this fixes: export of a segmentation checkpoint read it as a fine-tuning one and stopped
    with "unknown config key 'model.out_indices'"."""
    out = tmp_path / "upernet.safetensors"
    assert main(["export", str(runs["segment"]), "--out", str(out)]) == 0
    assert read_checkpoint(out).task == "segment"
    model, _, names = load_segmentor(runs["segment"])
    again, _, names_again = load_segmentor(out)
    assert names_again == names and all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    (exported, _), (original, _) = run_segment_eval(str(out)), run_segment_eval(str(runs["segment"]))
    assert exported.pop("data")["source"] == f"recorded in {out}"  # each names the file it read
    original.pop("data")
    same = json.dumps(exported) == json.dumps(original)
    assert same  # (compared as JSON: a class absent from the images scores nan, and nan != nan)


def test_the_cli_refuses_a_file_without_its_task_in_one_paragraph(runs, tmp_path, capsys):
    for kind in ("finetune", "segment"):
        path = without_task(runs[kind], tmp_path / f"{kind}.pt")
        assert main(["export", str(path), "--out", str(tmp_path / f"{kind}.safetensors")]) == 2
        err = capsys.readouterr().err
        assert f"'{path}' holds a deepmim run's config but no `task` key" in err and "torch.save(ckpt, path)" in err
        assert not (tmp_path / f"{kind}.safetensors").exists()


def test_kinds_that_do_not_fit_are_refused_by_name(runs, tmp_path, capsys):
    assert main(["export", str(runs["linprobe"]), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "is a linear-probe head (written by deepmim linprobe)" in err and "Export the checkpoint it probed" in err
    assert not (tmp_path / "x.safetensors").exists()
    assert main(["export", str(runs["segment"]), "--out", str(tmp_path / "y.safetensors"), "--img-size", "32"]) == 2
    assert "is a segmentation checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="is a segmentation checkpoint .*not a fine-tuning checkpoint"):
        load_classifier(runs["segment"])
    with pytest.raises(CheckpointError, match="is a fine-tuning checkpoint .* no pre-trained DeepMIM model"):
        load_checkpoint(runs["finetune"])
    assert main(["knn", str(runs["finetune"]), "data.num_samples=20"]) == 2
    assert "is a fine-tuning checkpoint (written by deepmim finetune)" in capsys.readouterr().err


def test_the_probe_head_records_its_run(runs):
    ckpt = read_checkpoint(runs["linprobe"])
    assert ckpt.raw["block"] == 4 and ckpt.raw["pool"] == "cls" and ckpt.model_state["head.weight"].shape == (10, 128)
    assert ckpt.config == to_dict(
        LinprobeConfig(
            data=tiny_data(20),
            features=FeatureConfig(cache_dir=None, progress=False, pool="cls"),
            probe=LinearProbeConfig(epochs=1, warmup_epochs=1, batch_size=8),
            augment=False,
        )
    )


def test_resume_refuses_a_checkpoint_of_another_task(runs, tmp_path):
    with pytest.raises(
        CheckpointError, match="is a pre-training checkpoint .*train.resume continues a run of the same task"
    ):
        run_finetune(
            load_finetune_config(
                "finetune_demo",
                [
                    f"model.checkpoint={runs['pretrain']}",
                    "data.img_size=16",
                    "data.num_samples=40",
                    "data.num_workers=0",
                    "train.batch_size=8",
                    "train.epochs=1",
                    f"train.resume={runs['pretrain']}",
                    f"train.output_dir={tmp_path / 'ft'}",
                    *COMMON,
                ],
            )
        )


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
    err = single_line_cli_error(
        capsys, "export", str(bare), "--preset", "mae_vit_micro_p4_32", "--out", str(tmp_path / "x.st")
    )
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
    err = single_line_cli_error(
        capsys, "export", str(bare), "--preset", "mae_vit_micro_p4_32", "--out", str(tmp_path / "x.st")
    )
    assert "blocks.1.mlp.fc1.weight" in err and "NaN or inf" in err and not (tmp_path / "x.st").exists()
    good = _bare_encoder(tmp_path)
    assert main(["export", str(good), "--preset", "mae_vit_micro_p4_32", "--out", str(tmp_path / "x.st")]) == 0
    run_pretrain(tiny_pretrain_config(tmp_path / "run", epochs=1))
    ckpt = torch.load(tmp_path / "run" / LAST, weights_only=True)
    ckpt["model"]["encoder.cls_token"][..., 0] = float("inf")
    torch.save(ckpt, tmp_path / "run" / LAST)
    with pytest.raises(CheckpointError, match=r"checkpoint-last\.pt.*NaN or inf.*encoder\.cls_token.*Cannot resume"):
        run_pretrain(tiny_pretrain_config(tmp_path / "run", epochs=2, resume="auto"))


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
    err = traceback_free_cli_error(capsys, "pretrain", *TINY, f"train.output_dir={tmp_path}", "train.resume=auto")
    assert f"no space left on the disk while writing '{tmp_path / LAST}'" in err and "train.resume=auto" in err
    assert (tmp_path / LAST).read_bytes() == before and not list(tmp_path.glob(".checkpoint-*.tmp"))
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert main(["pretrain", *TINY, f"train.output_dir={tmp_path}", "train.resume=auto"]) == 0  # space freed


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


def test_unreadable_checkpoints_under_resume_auto_end_in_one_paragraph(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
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


KIND = "dummy"
ARCHITECTURE = {"outputs": 2}


@dataclass
class DummyConfig:
    width: int = 3
    note: str = "dummy run"


class DummyModel(nn.Module):
    def __init__(self, width: int, outputs: int):
        super().__init__()
        self.proj = nn.Linear(width, outputs)


def build_dummy(cfg: DummyConfig, architecture) -> DummyModel:
    return DummyModel(cfg.width, architecture["outputs"])


@pytest.fixture
def dummy_kind():
    kind = register_task_kind(
        TaskKind(KIND, "deepmim dummy", "a dummy checkpoint", DummyConfig, build_model=build_dummy)
    )
    yield kind
    unregister_task_kind(KIND)


def write_dummy(tmp_path, cfg: Optional[DummyConfig] = None):
    """A checkpoint of the dummy task, as its run would write one: (path, the model it holds)."""
    cfg = cfg or DummyConfig()
    torch.manual_seed(0)
    model = DummyModel(cfg.width, ARCHITECTURE["outputs"])
    path = tmp_path / "dummy.pt"
    atomic_save(make_checkpoint(KIND, model.state_dict(), to_dict(cfg), ARCHITECTURE, epoch=1, step=7), path)
    return path, model


def test_the_record_registers_and_unregisters():
    assert task_kinds() == ("pretrain", "finetune", "segment", "linprobe")
    kind = register_task_kind(TaskKind(KIND, "deepmim dummy", "a dummy checkpoint", DummyConfig))
    try:
        assert task_kinds()[-1] == KIND and kind.describe() == "a dummy checkpoint (written by deepmim dummy)"
        with pytest.raises(ValueError, match="'dummy' is registered already"):
            register_task_kind(kind)
    finally:
        unregister_task_kind(KIND)
    assert KIND not in task_kinds()
    with pytest.raises(ValueError, match="unknown checkpoint task 'dummy'; one of pretrain, finetune, segment"):
        make_checkpoint(KIND, {}, {})


def test_a_hook_is_a_callable_or_its_import_path():
    assert task_hook("deepmim.models.classifier:trained_classifier") is trained_classifier
    assert task_hook(build_dummy) is build_dummy and task_hook(None) is None


def test_its_checkpoint_reads_back_as_that_kind(dummy_kind, tmp_path):
    path, model = write_dummy(tmp_path)
    ckpt = read_checkpoint(path)
    assert ckpt.task == KIND and ckpt.task_kind is dummy_kind
    assert ckpt.kind == "a dummy checkpoint (written by deepmim dummy)"
    assert ckpt.config == {"width": 3, "note": "dummy run"} and ckpt.architecture == {"outputs": 2}
    assert (ckpt.epoch, ckpt.step) == (1, 7)
    assert sorted(ckpt.model_state) == ["proj.bias", "proj.weight"]
    assert torch.equal(ckpt.model_state["proj.weight"], model.proj.weight)


def test_load_trained_rebuilds_its_model_from_the_record(dummy_kind, tmp_path):
    path, model = write_dummy(tmp_path, DummyConfig(width=5))
    loaded, cfg, arch = load_trained(path, KIND)
    assert isinstance(loaded, DummyModel) and not loaded.training
    assert cfg == DummyConfig(width=5, note="dummy run") and arch == {"outputs": 2}
    assert loaded.proj.weight.shape == (2, 5) and torch.equal(loaded.proj.weight, model.proj.weight)


def test_the_cli_names_it_where_another_kind_is_needed(dummy_kind, tmp_path, capsys):
    path, _ = write_dummy(tmp_path)
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        f"deepmim evaluate: error: '{path}' is a dummy checkpoint (written by deepmim dummy), not a fine-tuning "
        f"checkpoint (written by deepmim finetune): evaluate and export read fine-tuned classifiers"
    ) in err
    with pytest.raises(CheckpointError, match="is a dummy checkpoint .* no pre-trained DeepMIM model"):
        read_checkpoint(path).model_config()


def test_export_writes_its_weights_and_they_read_back_as_its_checkpoint(dummy_kind, tmp_path, capsys):
    path, model = write_dummy(tmp_path)
    out = tmp_path / "dummy.safetensors"
    assert main(["export", str(path), "--out", str(out)]) == 0
    assert (
        f"wrote {out}: the weights of a dummy checkpoint (written by deepmim dummy), with the config they "
        f"were trained with"
    ) in capsys.readouterr().out
    exported = read_checkpoint(out)
    assert exported.task == KIND and exported.config == {"width": 3, "note": "dummy run"}
    assert exported.architecture == {"outputs": 2}
    again, _, _ = load_trained(out, KIND)
    assert torch.equal(again.proj.weight, model.proj.weight) and torch.equal(again.proj.bias, model.proj.bias)
    assert main(["export", str(path), "--format", "timm", "--out", str(tmp_path / "timm")]) == 2
    assert (
        "is a dummy checkpoint (written by deepmim dummy): timm has no model to load it into" in capsys.readouterr().err
    )
    assert not (tmp_path / "timm").exists()


def test_a_kind_no_longer_registered_is_named_by_its_file_and_not_exported(tmp_path, capsys):
    register_task_kind(TaskKind(KIND, "deepmim dummy", "a dummy checkpoint", DummyConfig, build_model=build_dummy))
    try:
        path, _ = write_dummy(tmp_path)
    finally:
        unregister_task_kind(KIND)
    ckpt = read_checkpoint(path)
    assert ckpt.task == KIND and ckpt.task_kind is None
    assert ckpt.kind == "a dummy checkpoint (written by deepmim dummy)"
    assert main(["export", str(path), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert (
        "is a dummy checkpoint (written by deepmim dummy), a kind this installation of deepmim does not know "
        "(it knows pretrain, finetune, segment, linprobe)"
    ) in capsys.readouterr().err


COMMAND_MODULE = '''
ORDER = 55
SUMMARY = """\\
  dummy      the dummy task's command
"""


def add_parser(subparsers):
    p = subparsers.add_parser("dummy", help="the dummy task's command")
    p.add_argument("value", type=int)
    p.set_defaults(handler=lambda args: args.value + 1)
'''


def test_a_command_is_one_module_of_the_cli_package(tmp_path, monkeypatch, capsys):
    import sys

    import deepmim.cli

    (tmp_path / "dummy_command.py").write_text(COMMAND_MODULE)
    monkeypatch.setattr(deepmim.cli, "__path__", [*deepmim.cli.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "deepmim.cli.dummy_command", raising=False)
    try:
        assert main(["dummy", "41"]) == 42  # parsed by its parser, run by its handler
        with pytest.raises(SystemExit):
            main(["--help"])
        lines = capsys.readouterr().out.splitlines()
        listed = [line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("   ")]
        assert "  dummy      the dummy task's command" in lines  # its SUMMARY in the command list ...
        assert listed.index("linprobe") < listed.index("dummy") < listed.index("finetune")  # ... at its ORDER
    finally:
        sys.modules.pop("deepmim.cli.dummy_command", None)


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
