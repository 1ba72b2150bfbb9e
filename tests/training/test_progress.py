"""What a run prints: a bar on a terminal, whole lines in files (no control codes), bars that name a
checkpoint by its run folder, a short start-up summary."""

from __future__ import annotations

import io
import re

import pytest

from deepmim.cli.main import main
from deepmim.config.schema import DataConfig
from deepmim.tasks.pretrain import run_pretrain
from deepmim.training import progress as progress_mod
from deepmim.training.progress import (
    LineBar,
    Progress,
    checkpoint_label,
    format_duration,
    format_line,
    resolve_style,
    task_bar,
)
from tests.helpers.data import save_checkpoint_with_data, write_folder
from tests.helpers.runs import tiny_pretrain_config

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
    assert [line.split(" |")[0] for line in every.getvalue().splitlines()] == [
        "x: 1/3 (33.3%)",
        "x: 2/3 (66.7%)",
        "x: 3/3 (100.0%)",
    ]
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
    ckpt = save_checkpoint_with_data(
        tmp_path / "pre" / "checkpoint-last.pt", DataConfig(name="imagefolder", path=str(folder), img_size=16)
    )
    assert main(["knn", str(ckpt), "knn.k=3", "features.cache_dir=", "features.progress=true"]) == 0
    err = capsys.readouterr().err
    assert not CONTROL.search(err)
    assert re.search(r"^pre/checkpoint-last\.pt train blocks \[4\] \(images\): 12/12 \(100\.0%\) \| ", err, re.M)
    assert re.search(r"^pre/checkpoint-last\.pt val blocks \[4\] \(images\): 8/8 \(100\.0%\) \| ", err, re.M)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_style_is_a_bar_on_a_terminal_and_lines_elsewhere():
    assert resolve_style("auto", FakeTerminal()) == "bar"
    assert resolve_style("auto", io.StringIO()) == "lines"
    assert resolve_style("lines", FakeTerminal()) == "lines"
    with pytest.raises(ValueError, match="progress_style"):
        resolve_style("fancy", io.StringIO())


def test_line_holds_step_epoch_losses_per_head_lr_speed_and_eta():
    values = {
        "epoch": 1,
        "lr": 1.2e-3,
        "loss": 1.45234,
        "loss_block3": 0.36412,
        "loss_block6": 0.35981,
        "img_per_s": 1432.4,
    }
    assert format_line(1200, 18720, 2, 40, values, 3731.0) == (
        "step 1200/18720 (6.4%) | epoch 3/40 | loss 1.4523 (block3 0.3641 block6 0.3598) | lr 1.20e-03 | "
        "1432 img/s | ETA 1:02:11"
    )
    assert format_duration(2 * 86400 + 3 * 3600 + 14 * 60 + 10) == "2d 03:14:10"


def test_lines_come_every_n_steps_or_t_seconds(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress_mod.time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    p = Progress(
        total=100, initial=0, stop_at=100, steps_per_epoch=10, style="lines", every_s=60, every_steps=25, stream=out
    )
    for step in range(5, 101, 5):  # a logging step every 5 steps, 1 s apart
        clock[0] += 1.0
        p.update(5)
        p.show(step, (step - 1) // 10, {"loss": 1.0, "lr": 1e-3, "img_per_s": 10.0})
    steps = [int(line.split()[1].split("/")[0]) for line in out.getvalue().splitlines()]
    assert steps == [5, 30, 55, 80, 100]  # the first, every 25 steps, the last
    out = io.StringIO()
    p = Progress(total=100, initial=0, stop_at=100, steps_per_epoch=10, style="lines", every_s=7, stream=out)
    for step in range(5, 101, 5):
        clock[0] += 1.0
        p.show(step, 0, {"loss": 1.0})
    steps = [int(line.split()[1].split("/")[0]) for line in out.getvalue().splitlines()]
    assert steps == [5, 40, 75, 100]  # the first, then every 7 s (7 logging steps), the last


def test_disabled_progress_writes_nothing():
    out = io.StringIO()
    p = Progress(total=10, initial=0, stop_at=10, steps_per_epoch=5, enabled=False, stream=out)
    p.show(10, 1, {"loss": 1.0})
    assert out.getvalue() == "" and p.style == "off"


def test_a_run_into_a_file_writes_whole_lines_and_a_short_summary(tmp_path, capsys):
    run_pretrain(tiny_pretrain_config(tmp_path, progress=True, progress_steps=3))  # 8 steps, a log every step
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["1/8", "4/8", "7/8", "8/8"]
    assert all("| lr " in line and "img/s" in line and "(block2 " in line and "ETA" in line for line in progress)
    summary = [line for line in lines if not line.startswith("step ")]
    assert summary[0].startswith("deepmim pretrain: DeepMIM ViT 32 wide x 4 blocks, 16px / patch 4")
    assert any(line.strip() == f"output  {tmp_path} (full config: {tmp_path / 'config.yaml'})" for line in summary)
    assert "resolved config" not in err and len(summary) <= 8
    assert (tmp_path / "config.yaml").read_text().count("\n") > 50


def test_print_config_puts_the_whole_config_on_the_console(tmp_path, capsys):
    run_pretrain(tiny_pretrain_config(tmp_path, print_config=True, epochs=1))
    err = capsys.readouterr().err
    assert "--- resolved config ---" in err and "log_every_steps: 1" in err
