"""A new kind of checkpoint is one record (deepmim.checkpoint.TaskKind). A dummy task registered here, with a
tiny config and model, has its files written, read, rebuilt by load_trained, named in the CLI's messages and
exported, and no other module knows its name."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from deepmim.checkpoint import (CheckpointError, TaskKind, atomic_save, make_checkpoint, read_checkpoint,
                                register_task_kind, task_kinds, unregister_task_kind)
from deepmim.cli.main import main
from deepmim.config.loader import to_dict
from deepmim.models.classifier import trained_classifier
from deepmim.tasks.base import load_trained, task_hook

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
    kind = register_task_kind(TaskKind(KIND, "deepmim dummy", "a dummy checkpoint", DummyConfig,
                                       build_model=build_dummy))
    yield kind
    unregister_task_kind(KIND)


def write_dummy(tmp_path, cfg: DummyConfig = DummyConfig()):
    """A checkpoint of the dummy task, as its run would write one: (path, the model it holds)."""
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
    assert (f"deepmim evaluate: error: '{path}' is a dummy checkpoint (written by deepmim dummy), not a fine-tuning "
            f"checkpoint (written by deepmim finetune): evaluate and export read fine-tuned classifiers") in err
    with pytest.raises(CheckpointError, match="is a dummy checkpoint .* no pre-trained DeepMIM model"):
        read_checkpoint(path).model_config()


def test_export_writes_its_weights_and_they_read_back_as_its_checkpoint(dummy_kind, tmp_path, capsys):
    path, model = write_dummy(tmp_path)
    out = tmp_path / "dummy.safetensors"
    assert main(["export", str(path), "--out", str(out)]) == 0
    assert (f"wrote {out}: the weights of a dummy checkpoint (written by deepmim dummy), with the config they "
            f"were trained with") in capsys.readouterr().out
    exported = read_checkpoint(out)
    assert exported.task == KIND and exported.config == {"width": 3, "note": "dummy run"}
    assert exported.architecture == {"outputs": 2}
    again, _, _ = load_trained(out, KIND)
    assert torch.equal(again.proj.weight, model.proj.weight) and torch.equal(again.proj.bias, model.proj.bias)
    assert main(["export", str(path), "--format", "timm", "--out", str(tmp_path / "timm")]) == 2
    assert "is a dummy checkpoint (written by deepmim dummy): timm has no model to load it into" in \
        capsys.readouterr().err
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
    assert ("is a dummy checkpoint (written by deepmim dummy), a kind this installation of deepmim does not know "
            "(it knows pretrain, finetune, segment, linprobe)") in capsys.readouterr().err


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
