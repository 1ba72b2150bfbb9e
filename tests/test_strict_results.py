"""Segmentation's start-up summary counts iterations and every task warns when the warm-up outlasts the
run; per-class tables show the classes present (the JSON keeps all); every results file is strict JSON."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from deepmim.analysis.segmentation_metrics import confusion_matrix, per_class_table, segmentation_scores
from deepmim.cli.main import main
from deepmim.config.schema import OptimConfig, TrainConfig
from deepmim.tasks.summary import run_summary
from deepmim.training.jsonfile import dumps
from tests.conftest import save_tiny_pretrained


def strict_load(text: str):
    """json.loads that refuses NaN / Infinity, as JavaScript's JSON.parse, jq and serde do."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_strict_json_writes_null_for_undefined_numbers():
    scores = segmentation_scores(confusion_matrix(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), 4))
    assert math.isnan(scores["IoU"][2])
    with pytest.raises(ValueError, match="NaN"):
        strict_load(json.dumps(scores))  # what json.dumps alone writes
    parsed = strict_load(dumps(scores))
    assert parsed["IoU"] == [100.0, 100.0, None, None] and parsed["present"] == [True, True, False, False]


def test_per_class_table_shows_the_classes_present_only():
    scores = segmentation_scores(confusion_matrix(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]), 5))
    table = per_class_table(scores, ["sky", "road", "tree", "car", "bus"])
    rows = [line.split()[0] for line in table.splitlines()[1:-2]]
    assert rows == ["sky", "road"] and "tree" not in table and "nan" not in table
    assert "(2 of 5 classes occur in the evaluated labels; the JSON lists all)" in table


class Loader:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


ENV = SimpleNamespace(world_size=1, device="cpu", precision="fp32")


def test_every_task_warns_when_the_warm_up_outlasts_the_run():
    cfg = SimpleNamespace(train=TrainConfig(epochs=2, batch_size=8), optim=OptimConfig(warmup_epochs=5))
    text = run_summary("deepmim pretrain", "model", "data", cfg, Loader(10), ENV)
    assert "5 warm-up epoch(s) = 50 steps" in text
    assert "warning the warm-up (50 steps) is longer than the run (20 steps)" in text and "optim.warmup_epochs=N" in text
    cfg.optim.warmup_epochs = 1
    assert "warning" not in run_summary("deepmim pretrain", "model", "data", cfg, Loader(10), ENV)


@pytest.mark.slow
def test_segmentation_summary_tables_and_json(tmp_path, capsys):
    pretrained = save_tiny_pretrained(tmp_path / "pre.pt")
    out = tmp_path / "run"
    assert main(["segment", "train", "--config", "upernet_demo", f"model.checkpoint={pretrained}", "model.channels=16",
                 "model.aux_channels=8", "data.img_size=16", "data.scale=[16,16]", "data.crop_size=16",
                 "data.num_samples=8", "data.val_samples=2", "data.num_workers=0", "eval.crop_size=16",
                 "train.batch_size=4", "train.iterations=4", "train.eval_every=2", "optim.warmup_iters=50",
                 f"train.output_dir={out}", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
                 "train.precision=fp32"]) == 0
    captured = capsys.readouterr()
    assert "  steps   4 iterations, validation every 2; batch 4 per process" in captured.err
    assert "50 warm-up iteration(s)" in captured.err
    assert "warning the warm-up (50 steps) is longer than the run (4 steps)" in captured.err
    assert "optim.warmup_iters=N" in captured.err
    trained = strict_load((out / "eval.json").read_text())
    assert len(trained["IoU"]) == 11 and None in trained["IoU"]  # absent classes: null, all listed
    present = sum(trained["present"])
    assert 0 < present < 11
    assert f"({present} of 11 classes occur in the evaluated labels; the JSON lists all)" in captured.out
    scores = tmp_path / "scores.json"
    assert main(["segment", "eval", str(out / "checkpoint-last.pt"), "--out", str(scores)]) == 0
    printed = capsys.readouterr().out
    evaluated = strict_load(scores.read_text())
    assert evaluated["data"]["images"] == {"val": 2} and "data: embedded (recorded in" in printed
    table_rows = printed.split("IoU")[1].splitlines()[1:-2]
    assert len(table_rows) == present and "nan" not in printed


def test_probe_results_are_strict_json(tmp_path):
    from tests.test_scored_data import save_checkpoint_with_data
    from deepmim.config.schema import DataConfig

    ckpt = save_checkpoint_with_data(tmp_path / "pre" / "checkpoint-last.pt",
                                     DataConfig(name="embedded", img_size=16, num_samples=20))
    quiet = [f"features.cache_dir={tmp_path / 'cache'}", "features.progress=false"]
    assert main(["knn", str(ckpt), "knn.k=3", "--out", str(tmp_path / "k"), *quiet]) == 0
    assert main(["probe-layers", str(ckpt), "--blocks", "4", "probe.epochs=1", "probe.batch_size=8",
                 "--out", str(tmp_path / "pl"), *quiet]) == 0
    for path in (tmp_path / "k" / "knn.json", tmp_path / "pl" / "layers.json"):
        strict_load(Path(path).read_text())


def test_the_probe_warns_when_its_warm_up_outlasts_it(caplog):
    import logging

    from deepmim.analysis.probes import train_linear_probe
    from deepmim.config.schema import LinearProbeConfig

    x, y = torch.randn(16, 4), torch.arange(16) % 2
    with caplog.at_level(logging.WARNING, logger="deepmim"):
        train_linear_probe(x, y, x, y, 2, LinearProbeConfig(epochs=2, warmup_epochs=10, batch_size=8))
    assert "probe.warmup_epochs=10 is longer than probe.epochs=2" in caplog.text
