"""The console rule for every command: a bar on a terminal, whole lines in a file (no control codes),
bars that name a checkpoint by its run folder; help texts that name the real defaults."""
from __future__ import annotations

import argparse
import io
import re

from deepmim.cli.main import build_parser, main
from deepmim.config.schema import AnalyzeConfig, DataConfig, LinprobeConfig, ProbeConfig
from deepmim.training.progress import LineBar, checkpoint_label, task_bar
from tests.test_scored_data import save_checkpoint_with_data, write_folder

CONTROL = re.compile(r"[\r\x1b]")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_on_a_terminal_whole_lines_in_a_file():
    in_file = io.StringIO()
    bar = task_bar(range(5), desc="features", stream=in_file)
    assert isinstance(bar, LineBar) and list(bar) == [0, 1, 2, 3, 4]
    lines = in_file.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("features: 5/5 (100.0%) | ") and "done in" in lines[0]
    assert not CONTROL.search(in_file.getvalue())
    every = io.StringIO()
    bar = task_bar(total=3, desc="x", stream=every, every_s=1e-9)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert [line.split(" |")[0] for line in every.getvalue().splitlines()] == ["x: 1/3 (33.3%)", "x: 2/3 (66.7%)",
                                                                               "x: 3/3 (100.0%)"]
    off = io.StringIO()
    list(task_bar(range(3), desc="x", enabled=False, stream=off))
    assert off.getvalue() == ""
    terminal = Terminal()
    bar = task_bar(range(3), desc="x", stream=terminal)
    assert not isinstance(bar, LineBar)  # tqdm's live bar
    list(bar)


def test_checkpoint_label_names_the_run_folder():
    assert checkpoint_label("runs/mae/checkpoint-last.pt") == "mae/checkpoint-last.pt"
    assert checkpoint_label("weights.pth") == "weights.pth"


def test_feature_extraction_writes_lines_without_control_codes(tmp_path, capsys):
    folder = write_folder(tmp_path / "photos")
    ckpt = save_checkpoint_with_data(tmp_path / "pre" / "checkpoint-last.pt",
                                     DataConfig(name="imagefolder", path=str(folder), img_size=16))
    assert main(["knn", str(ckpt), "knn.k=3", "features.cache_dir=", "features.progress=true"]) == 0
    err = capsys.readouterr().err
    assert not CONTROL.search(err)
    assert re.search(r"^pre/checkpoint-last\.pt train blocks \[4\] \(images\): 12/12 \(100\.0%\) \| ", err, re.M)
    assert re.search(r"^pre/checkpoint-last\.pt val blocks \[4\] \(images\): 8/8 \(100\.0%\) \| ", err, re.M)


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_help_texts_name_the_real_defaults():
    subs = dict(_subparsers(build_parser()))
    outs = {name: next(a.help for a in subs[name]._actions if "--out" in a.option_strings)
            for name in ("knn", "probe-layers", "linprobe", "analyze")}
    assert f"runs/probe" in outs["probe-layers"] and ProbeConfig().output_dir == "runs/probe"
    assert LinprobeConfig().output_dir in outs["linprobe"] and "runs/probe" not in outs["linprobe"]
    assert AnalyzeConfig().output_dir in outs["analyze"] and "runs/probe" not in outs["analyze"]
    assert "default: none" in outs["knn"]
    for name, sub in subs.items():  # every option whose help names a default names its own
        for action in sub._actions:
            if action.help and "(default" in action.help and action.default not in (None, argparse.SUPPRESS):
                assert str(action.default) in action.help, (name, action.option_strings)
