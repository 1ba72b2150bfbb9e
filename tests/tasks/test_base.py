"""The task skeleton (tasks/base.py): every training task checks its config, data and model before
the first file is written, and supports the strategies it says."""

import pytest

from deepmim.config.loader import ConfigError
from deepmim.tasks.base import TrainingTask, run_training
from deepmim.tasks.finetune import load_finetune_config, run_finetune
from deepmim.tasks.pretrain import load_pretrain_config, run_pretrain
from deepmim.tasks.segment import load_segment_config, run_segment_train

COMMON = ["train.progress=false", "train.tensorboard=false", "train.device=cpu", "train.precision=fp32"]


def _pretrain(out, *extra):
    return run_pretrain(
        load_pretrain_config(
            "demo", ["data.num_samples=64", "data.num_workers=0", f"train.output_dir={out}", *COMMON, *extra]
        )
    )


def _finetune(pretrained, out, *extra):
    return run_finetune(
        load_finetune_config(
            "finetune_demo",
            [
                f"model.checkpoint={pretrained}",
                "data.img_size=16",
                "data.num_samples=40",
                "data.num_workers=0",
                "train.batch_size=8",
                f"train.output_dir={out}",
                *COMMON,
                *extra,
            ],
        )
    )


def _segment(pretrained, out, *extra):
    return run_segment_train(
        load_segment_config(
            "upernet_demo",
            [
                f"model.checkpoint={pretrained}",
                "data.img_size=16",
                "data.scale=[16,16]",
                "data.crop_size=16",
                "data.num_samples=8",
                "data.val_samples=4",
                "data.num_workers=0",
                f"train.output_dir={out}",
                *COMMON,
                *extra,
            ],
        )
    )


@pytest.mark.parametrize(
    "run,extra,message",
    [
        (lambda p, out, *e: _pretrain(out, *e), ["data.img_size=16"], "data.img_size=16 but model.encoder.img_size"),
        (lambda p, out, *e: _pretrain(out, *e), ["train.strategy=zero"], "train.strategy must be one of ddp, fsdp"),
        (_finetune, ["train.batch_size=7"], "even train.batch_size"),  # a config check
        (_finetune, ["model.num_classes=5"], "model.num_classes=5 but the data has 10 classes"),  # found in the data
        (_finetune, ["train.strategy=fsdp"], "fine-tuning supports train.strategy=ddp"),
        (_segment, ["train.strategy=fsdp"], "segmentation supports train.strategy=ddp"),
        (_segment, ["model.num_classes=3"], "model.num_classes=3 but the data has 11 classes"),
        (_segment, ["model.out_indices=[0,1]"], "needs 4 blocks"),  # found building the model
    ],
)
def test_nothing_is_written_before_config_data_and_model_are_checked(pretrained, tmp_path, run, extra, message):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        run(pretrained, out, *extra)
    assert not out.exists()


def test_a_task_runs_its_steps_in_the_skeletons_order(tmp_path):
    """A made-up task records the calls: checks, data, model, hooks, groups, then the output folder."""
    calls = []

    class Recorder(TrainingTask):
        kind, title = "pretrain", "recording"

        def validate(self):
            calls.append("validate")

        def build_data(self, env):
            calls.append("data")
            raise RuntimeError("stop here")

    cfg = load_pretrain_config("demo", [f"train.output_dir={tmp_path / 'run'}", *COMMON])
    with pytest.raises(RuntimeError, match="stop here"):
        run_training(Recorder(cfg))
    assert calls == ["validate", "data"] and not (tmp_path / "run").exists()
    cfg.train.strategy = "fsdp"
    calls.clear()
    with pytest.raises(ConfigError, match="recording supports train.strategy=ddp"):
        run_training(Recorder(cfg))
    assert calls == ["validate"]
