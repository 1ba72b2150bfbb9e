"""What the trackers receive besides the scalars: the config (TensorBoard hparams and text, MLflow params
without 'None'), the epoch as a metric, config.yaml and the final weights as artifacts, and a resumed W&B run
that gets no step twice. W&B runs offline, MLflow on a file store: nothing leaves the machine."""
from __future__ import annotations

import glob
import json
import logging
import os

import pytest
import torch

from deepmim.checkpoint import epoch_file_name
from deepmim.cli.main import main
from deepmim.tasks.pretrain import run_pretrain
from deepmim.training.metrics_log import read_metrics
from deepmim.training.trackers import RUNS_FILE, flat_config, scalars
from tests.test_loggers import wandb_file_rows
from tests.test_training import tiny_pretrain_config


def test_params_leave_out_none_and_write_values_as_json():
    flat = flat_config({"train": {"epochs": 3, "resume": None, "tags": ["a"], "fused": True, "name": "x"}})
    assert flat == {"train.epochs": "3", "train.tags": '["a"]', "train.fused": "true", "train.name": "x"}
    assert "None" not in flat.values()


def test_the_epoch_is_a_metric():
    assert scalars("train", {"epoch": 2, "step": 7, "loss": 0.5}) == {"train/loss": 0.5, "train/epoch": 2.0}


@pytest.mark.slow
def test_tensorboard_gets_the_config_as_hparams_and_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = tiny_pretrain_config(tmp_path, loggers=["jsonl", "tensorboard"], tensorboard=True, max_steps=2)
    run_pretrain(cfg)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    (text,) = events.Tensors("config/text_summary")
    assert "batch_size: 16" in text.tensor_proto.string_val[0].decode()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.batch_size"].number_value == 16
    assert start.hparams["model.encoder.patch_size"].number_value == 4
    assert "train.resume" not in start.hparams  # None: left out
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "train/loss" in [m.name.tag for m in experiment.metric_infos]
    assert events.Scalars("train/epoch")[-1].value == 1.0


@pytest.mark.slow
def test_mlflow_params_epoch_and_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_pretrain_config(tmp_path, loggers=["jsonl", "mlflow"], log_artifacts=True)
    run_pretrain(cfg)
    run_id = json.loads((tmp_path / RUNS_FILE).read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    params = client.get_run(run_id).data.params
    assert "None" not in params.values() and "train.resume" not in params and params["train.batch_size"] == "16"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/epoch")][-1] == (8, 2.0)
    assert [a.path for a in client.list_artifacts(run_id, "config")] == ["config/config.yaml"]
    (weights,) = client.list_artifacts(run_id, "model")
    local = client.download_artifacts(run_id, weights.path, str(tmp_path / "download"))
    final = torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)["model"]
    assert all(torch.equal(v, final[k]) for k, v in load_file(local).items()) and len(load_file(local)) == len(final)


def wandb_steps(run_dir):
    """{offline run file: the _step of every history row}, for each run in run_dir in the order the runs
    ended (last write), not by folder name: two runs started in one second tie on the name's timestamp."""
    files = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    return {path: [row["_step"] for row in wandb_file_rows(path)] for path in sorted(files, key=os.path.getmtime)}


@pytest.mark.slow
def test_a_resumed_wandb_run_gets_no_step_twice(tmp_path, monkeypatch):
    """The first run checkpoints at step 4 and logs on to step 6 (as if killed there); the second resumes
    from step 4 under the same run id. W&B receives steps 1-6 from the first, 7-8 from the second."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")

    def config(**train):
        cfg = tiny_pretrain_config(tmp_path, loggers=["jsonl", "wandb"], **train)
        cfg.train.wandb.mode, cfg.train.wandb.project = "offline", "deepmim-test"
        return cfg

    run_pretrain(config(max_steps=6, save_every_epochs=1))
    first_id = json.loads((tmp_path / RUNS_FILE).read_text())["wandb"]
    run_pretrain(config(resume=str(tmp_path / epoch_file_name(1))))
    assert json.loads((tmp_path / RUNS_FILE).read_text())["wandb"] == first_id
    first, second = wandb_steps(tmp_path).values()
    assert sorted(set(first)) == [1, 2, 3, 4, 5, 6] and sorted(set(second)) == [7, 8]
    assert [row["step"] for row in read_metrics(tmp_path / "metrics.jsonl") if row["type"] == "train"] == list(range(1, 9))


def test_quiet_and_verbose_set_the_deepmim_loggers_level(tmp_path, capsys):
    from tests.test_interop_export import save_pretrained

    ckpt = save_pretrained(tmp_path / "ck.pt")
    logger = logging.getLogger("deepmim")
    try:
        assert main(["export", str(ckpt), "--out", str(tmp_path / "a.safetensors"), "--quiet"]) == 0
        assert logger.level == logging.WARNING
        logging.getLogger("deepmim.tasks.export").info("a message of the library")
        out, err = capsys.readouterr()
        assert "wrote" in out and "a message of the library" not in err  # results print, messages do not
        assert main(["--verbose", "export", str(ckpt), "--out", str(tmp_path / "b.safetensors")]) == 0
        assert logger.level == logging.DEBUG
        assert "export of" in capsys.readouterr().err  # the exporter's debug line
        assert main(["export", str(ckpt), "--out", str(tmp_path / "c.safetensors")]) == 0
        assert logger.level == logging.INFO and "export of" not in capsys.readouterr().err
    finally:
        logger.setLevel(logging.INFO)
