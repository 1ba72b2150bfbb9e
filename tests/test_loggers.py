"""train.loggers: W&B (offline) and MLflow (local file store) get exactly the numbers of metrics.jsonl."""
import glob
import json
import struct

import pytest

from deepmim.config.loader import ConfigError
from deepmim.tasks.pretrain import run_pretrain
from deepmim.training.metrics_log import MetricsLogger, read_metrics
from deepmim.training.trackers import RUNS_FILE, resolve_loggers, scalars
from tests.test_training import tiny_pretrain_config


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
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
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
    from_mlflow = {(m.step, key): m.value for key in {k for _, k in expected}
                   for m in client.get_metric_history(ids["mlflow"], key)}
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
