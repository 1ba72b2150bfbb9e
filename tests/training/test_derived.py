"""Values derived from the config (target normalisation, effective batch and lr, warm-up in steps, the
image size trained) come from one place: the Python API, the CLI and --print-config agree."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from deepmim.cli.main import main
from deepmim.config.loader import dump_yaml
from deepmim.config.schema import DataConfig, OptimConfig, PretrainConfig, PretrainTrainConfig
from deepmim.tasks.pretrain import run_pretrain
from deepmim.training.derived import derive
from tests.helpers.models import tiny_model_config

GREY_ISH = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}  # not ImageNet's


def recipe(output_dir: Path) -> PretrainConfig:
    """A tiny HOG run on data with their own statistics: the target must undo them, not ImageNet's."""
    model = tiny_model_config()
    model.target = {"name": "hog", "cell_size": 4}
    return PretrainConfig(
        model=model,
        data=DataConfig(name="embedded", num_samples=32, img_size=16, num_workers=0, **GREY_ISH),
        optim=OptimConfig(base_lr=1e-3, warmup_epochs=1),
        train=PretrainTrainConfig(
            epochs=2,
            batch_size=8,
            device="cpu",
            precision="fp32",
            output_dir=str(output_dir),
            progress=False,
            loggers=["jsonl"],
            plots=False,
            log_every_steps=2,
        ),
    )


def last_loss(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == "train"][-1]["loss"]


@pytest.mark.slow
def test_the_python_api_and_the_cli_resolve_and_train_the_same_config(tmp_path, capsys):
    python_run, cli_run = tmp_path / "python", tmp_path / "cli"
    run_pretrain(recipe(python_run))
    path = tmp_path / "recipe.yaml"
    path.write_text(dump_yaml(recipe(cli_run)))
    assert main(["pretrain", "--config", str(path)]) == 0
    written = {run: yaml.safe_load((run / "config.yaml").read_text()) for run in (python_run, cli_run)}
    for config in written.values():
        config["train"].pop("output_dir")
    assert written[python_run] == written[cli_run]
    assert written[python_run]["model"]["target"]["mean"] == GREY_ISH["mean"]  # data.mean, not ImageNet's
    assert written[python_run]["model"]["target"]["std"] == GREY_ISH["std"]
    assert last_loss(python_run) == last_loss(cli_run)


@pytest.mark.slow
def test_print_config_and_the_start_up_summary_show_the_derived_values(tmp_path, capsys):
    cfg = recipe(tmp_path / "run")
    path = tmp_path / "recipe.yaml"
    path.write_text(dump_yaml(cfg))
    assert main(["pretrain", "--config", str(path), "--print-config"]) == 0
    printed = capsys.readouterr().out
    shown = yaml.safe_load(printed)
    assert shown["model"]["target"]["mean"] == GREY_ISH["mean"]
    expected = derive(cfg.train, cfg.optim, 1, img_size=16)
    assert expected.effective_batch == 8 and abs(expected.peak_lr - 1e-3 * 8 / 256) < 1e-12
    assert f"# derived, one process: effective batch 8, peak lr {expected.peak_lr:.3g}" in printed
    assert "# derived, one process: image size trained 16px" in printed
    assert main(["pretrain", "--config", str(path), "train.print_config=false"]) == 0
    err = capsys.readouterr().err
    steps = derive(cfg.train, cfg.optim, 1, steps_per_epoch=4)  # 32 images / batch 8
    assert steps.total_steps == 8 and steps.warmup_steps == 4
    assert f"{steps.peak_lr:.2e} peak (base_lr 0.001 x 8 / 256), 1 warm-up epoch(s) = 4 steps" in err


def test_the_trainer_runs_on_the_derived_values(tmp_path):
    from deepmim.training.env import Env
    from deepmim.training.loop import TaskSpec, TrainData, Trainer, TrainModel

    cfg = recipe(tmp_path)
    train = dataclasses.replace(cfg.train, accum_steps=2)

    class Loader:
        def __len__(self):
            return 10

    import torch

    trainer = Trainer(
        TrainModel(torch.nn.Linear(2, 2)),
        TrainData(Loader()),
        TaskSpec("pretrain", train, cfg.optim, None),
        Env(torch.device("cpu"), "fp32", world_size=1),
    )
    assert trainer.derived == derive(train, cfg.optim, 1, steps_per_epoch=5)
    assert (trainer.total_steps, trainer.warmup_steps, trainer.peak_lr) == (10, 5, 1e-3 * 16 / 256)
