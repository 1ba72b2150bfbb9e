"""Experiment trackers: logger names checked, W&B (offline) and MLflow (file store) get the numbers of
metrics.jsonl, the config and artifacts, and resumed runs continue without a step twice."""

from __future__ import annotations

import glob
import json
import os
import struct

import pytest
import torch

from deepmim.checkpoint import epoch_file_name
from deepmim.config.loader import ConfigError
from deepmim.tasks.pretrain import run_pretrain
from deepmim.training.metrics_log import MetricsLogger, read_metrics
from deepmim.training.trackers import RUNS_FILE, flat_config, resolve_loggers, scalars
from tests.helpers.runs import tiny_pretrain_config


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
    assert [row["step"] for row in read_metrics(tmp_path / "metrics.jsonl") if row["type"] == "train"] == list(
        range(1, 9)
    )


def test_logger_names_are_checked_and_the_tensorboard_switch_still_works():
    assert resolve_loggers(["jsonl", "tensorboard", "wandb"]) == ["jsonl", "tensorboard", "wandb"]
    assert resolve_loggers(["jsonl", "tensorboard"], tensorboard=False) == ["jsonl"]
    with pytest.raises(ConfigError, match="unknown logger.*comet"):
        resolve_loggers(["jsonl", "comet"])


def test_only_the_main_process_builds_trackers(tmp_path):
    def boom():
        raise AssertionError("trackers built on a non-main rank")

    MetricsLogger(tmp_path, enabled=False, trackers=boom).log("train", 1, {"loss": 1.0})
    assert not (tmp_path / "metrics.jsonl").exists()


def wandb_history(run_dir):
    """Every history row of an offline W&B run (one run in run_dir)."""
    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    return wandb_file_rows(path)


def wandb_file_rows(path):
    """Every history row of one .wandb file (a LevelDB-style log of protobuf Records: 7-byte header,
    32 KiB blocks, records split FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending, rows = open(path, "rb").read(), 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                )
    return rows


def expected_scalars(out):
    """{(step, '<type>/<key>'): value} of metrics.jsonl."""
    expected = {}
    for row in read_metrics(out / "metrics.jsonl"):
        for key, value in scalars(row["type"], row).items():
            expected[(row["step"], key)] = value
    return expected


@pytest.mark.slow
def test_wandb_offline_and_mlflow_file_store_read_back_the_json_lines(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_pretrain_config(tmp_path, loggers=["jsonl", "tensorboard", "wandb", "mlflow"], tensorboard=True)
    cfg.train.wandb.mode = "offline"
    cfg.train.wandb.project = "deepmim-test"
    run_pretrain(cfg)
    expected = expected_scalars(tmp_path)
    assert {k for _, k in expected} >= {"train/loss", "train/loss_block2", "train/lr", "epoch/loss"}
    ids = json.loads((tmp_path / RUNS_FILE).read_text())

    logged = {}
    for row in wandb_history(tmp_path):
        for key, value in row.items():
            if not key.startswith("_"):
                logged[(row["_step"], key)] = value
    assert logged == pytest.approx(expected, rel=1e-12)

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    run = client.get_run(ids["mlflow"])
    assert run.info.run_name == tmp_path.name and run.data.params["train.batch_size"] == "16"
    from_mlflow = {
        (m.step, key): m.value
        for key in {k for _, k in expected}
        for m in client.get_metric_history(ids["mlflow"], key)
    }
    assert from_mlflow == pytest.approx(expected, rel=1e-12)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    from_tb = {(e.step, tag): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    assert from_tb == pytest.approx(expected, rel=1e-6)  # TensorBoard stores float32


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_mlflow_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_pretrain(tiny_pretrain_config(tmp_path, loggers=["jsonl", "mlflow"], max_steps=4))
    first = json.loads((tmp_path / RUNS_FILE).read_text())["mlflow"]
    run_pretrain(tiny_pretrain_config(tmp_path, loggers=["jsonl", "mlflow"], resume="auto"))
    assert json.loads((tmp_path / RUNS_FILE).read_text())["mlflow"] == first
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    steps = sorted(m.step for m in client.get_metric_history(first, "train/loss"))
    assert steps == list(range(1, 9))
    assert client.get_run(first).info.status == "FINISHED"
