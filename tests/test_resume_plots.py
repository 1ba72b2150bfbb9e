"""Plots a kill kept from being drawn are drawn on resume; the final line names what it prints."""
from __future__ import annotations

import dataclasses
import json

import pytest

from deepmim.cli.main import main
from deepmim.config.loader import dump_yaml
from tests.test_training import tiny_pretrain_config


@pytest.mark.slow
def test_final_line_and_plots_written_on_resume(tmp_path, capsys):
    cfg = tiny_pretrain_config(tmp_path / "run", epochs=2, log_every_steps=3, plots=True)  # 4 steps an epoch
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(dump_yaml(cfg))
    assert main(["pretrain", "--config", str(recipe)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epoch_mean = [r for r in rows if r["type"] == "epoch"][-1]["loss"]
    logged = [r for r in rows if r["type"] == "train"][-1]
    assert logged["step"] == 8 and logged["loss"] != epoch_mean
    assert (f"pretrain finished: 8 steps, mean loss of the last epoch {epoch_mean:.4f}, last logged loss "
            f"{logged['loss']:.4f} (step 8), checkpoint ") in last
    for name in ("loss.png", "reconstruction.png"):  # as if killed before the plots were drawn
        (tmp_path / "run" / name).unlink()
    assert main(["pretrain", "--config", str(recipe), "train.resume=auto"]) == 0
    captured = capsys.readouterr()
    assert "nothing trained" in captured.out and "wrote" in captured.err
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "run" / "reconstruction.png").stat().st_size > 1000
    before = (tmp_path / "run" / "loss.png").stat().st_mtime_ns
    assert main(["pretrain", "--config", str(recipe), "train.resume=auto"]) == 0  # nothing missing: left alone
    assert (tmp_path / "run" / "loss.png").stat().st_mtime_ns == before
