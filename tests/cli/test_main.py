"""The `deepmim` command line: help, recipes, presets, --print-config, one-paragraph errors, the module
entry point, `make demo`, and help texts that name the real defaults."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from deepmim.cli.main import build_parser, main
from deepmim.config.loader import list_recipes
from deepmim.config.schema import AnalyzeConfig, LinprobeConfig, ProbeConfig


def test_help_teaches_the_tool(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for needle in ("pretrain", "recipes", "export", "key=value", "train.resume=auto", "torchrun"):
        assert needle in text


def test_recipes_lists_every_bundled_recipe_with_a_description(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(list_recipes())
    assert all(len(line.split(None, 1)) == 2 for line in lines)
    assert any(line.startswith("demo ") for line in lines)


def test_presets_lists_names(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "deepmim_pixel_vit_base" in out and "6:4x512" in out and "12:8x512" in out


def test_print_config_shows_resolved_values(capsys):
    assert main(["pretrain", "--config", "demo", "train.epochs=3", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "preset: deepmim_pixel_vit_micro_p4_32" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["train.epohcs=3"], "Did you mean 'epochs'"),
        (["data.name=imagefolder"], "data.path is required"),
        (["data.name=imagefolder", "data.path=/no/such/folder"], "/no/such/folder"),
        (["data.img_size=64"], "data.img_size=64 but model.encoder.img_size=32"),
        (["train.resume=/no/such.pt"], "no such checkpoint"),
    ],
)
def test_bad_input_exits_2_with_a_message_before_any_work(tmp_path, capsys, args, message):
    code = main(["pretrain", "--config", "demo", f"train.output_dir={tmp_path / 'run'}", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint-last.pt").exists()


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "deepmim", "recipes"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout


def test_make_demo_pretrains_then_prints_the_comparison_with_the_untrained_encoder(tmp_path):
    """`make demo` is the README's first command: pre-training, then probe-layers --vs-random on its checkpoint
    (the line that says whether it beat the encoder it started from) as its last step."""
    root = Path(__file__).resolve().parents[2]
    dry = subprocess.run(
        ["make", "-n", "-C", str(root), "demo", f"DEMO_DIR={tmp_path}"], capture_output=True, text=True, check=True
    ).stdout
    commands = [line for line in dry.splitlines() if "bin/deepmim " in line]
    assert len(commands) == 2
    assert f"deepmim pretrain --config demo train.output_dir={tmp_path}" in commands[0]
    assert f"deepmim probe-layers {tmp_path}/checkpoint-last.pt --vs-random" in commands[1]


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_help_texts_name_the_real_defaults():
    subs = dict(_subparsers(build_parser()))
    outs = {
        name: next(a.help for a in subs[name]._actions if "--out" in a.option_strings)
        for name in ("knn", "probe-layers", "linprobe", "analyze")
    }
    assert "runs/probe" in outs["probe-layers"] and ProbeConfig().output_dir == "runs/probe"
    assert LinprobeConfig().output_dir in outs["linprobe"] and "runs/probe" not in outs["linprobe"]
    assert AnalyzeConfig().output_dir in outs["analyze"] and "runs/probe" not in outs["analyze"]
    assert "default: none" in outs["knn"]
    for name, sub in subs.items():  # every option whose help names a default names its own
        for action in sub._actions:
            if action.help and "(default" in action.help and action.default not in (None, argparse.SUPPRESS):
                assert str(action.default) in action.help, (name, action.option_strings)
