"""Experiment trackers the logs are mirrored to: `train.loggers=[jsonl,tensorboard,wandb,mlflow]`.

metrics.jsonl is always written (loss.png, `deepmim analyze`, the study and resume read it); the others
get the same rows, as `<type>/<key>` scalars at the optimizer step (`train/loss`, `epoch/loss_block6`,
`eval/top1`), from rank 0 only. wandb and mlflow are optional extras (`pip install deepmim[wandb]`,
`deepmim[mlflow]`) imported only when asked for.

Resume: the trackers' run ids are kept in output_dir/trackers.json, so `train.resume=auto` continues
the same W&B run and MLflow run. Rows a killed run logged after its last checkpoint are logged again
by the resumed run: metrics.jsonl and TensorBoard drop the stale ones; MLflow keeps both points of such
a step; W&B ignores steps lower than the last it saw (so its curve keeps the killed run's points there).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from ..config.loader import ConfigError

LOGGERS = ("jsonl", "tensorboard", "wandb", "mlflow")
RUNS_FILE = "trackers.json"
_SKIPPED = ("epoch", "step")  # not plotted: the x axis and the epoch counter


def resolve_loggers(names: Iterable[str], tensorboard: bool = True) -> List[str]:
    """train.loggers checked; `train.tensorboard=false` (the older switch) removes tensorboard."""
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"train.loggers: unknown logger(s) {', '.join(unknown)}; choose from {', '.join(LOGGERS)}")
    return [n for n in names if tensorboard or n != "tensorboard"]


def scalars(kind: str, values: Dict[str, Any]) -> Dict[str, float]:
    """The plottable numbers of a row, named `<type>/<key>`."""
    return {f"{kind}/{k}": float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _SKIPPED}


def flat_config(config: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    """{'train': {'epochs': 3}} -> {'train.epochs': '3'} (MLflow params)."""
    out: Dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:500]
    return out


class Tracker:
    """One destination of the logged rows."""

    def log(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, output_dir: Path, resume_step: Optional[int]):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=resume_step)

    def log(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        for key, value in scalars(kind, values).items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """A W&B run in output_dir/wandb (train.wandb.mode=offline: nothing leaves the machine; `wandb sync`)."""

    def __init__(self, output_dir: Path, cfg, config: Dict[str, Any], run_id: Optional[str]):
        wandb = _optional("wandb", "wandb")
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or output_dir.name,
                              mode=cfg.mode, tags=list(cfg.tags) or None, dir=str(output_dir), config=config,
                              id=run_id, resume="allow" if run_id else None)
        self.run_id = self.run.id

    def log(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        self.run.log(scalars(kind, values), step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    """An MLflow run through MlflowClient. train.mlflow.tracking_uri unset: $MLFLOW_TRACKING_URI, else a
    file store in output_dir/mlruns (`mlflow ui --backend-store-uri runs/x/mlruns`)."""

    def __init__(self, output_dir: Path, cfg, config: Dict[str, Any], run_id: Optional[str]):
        _optional("mlflow", "mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (output_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 asks for this opt-in to its file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.tracking_uri = uri
        if run_id is None:
            experiment = self.client.get_experiment_by_name(cfg.experiment)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(cfg.experiment)
            run_id = self.client.create_run(experiment_id, run_name=cfg.run_name or output_dir.name).info.run_id
            params = [Param(k, v) for k, v in flat_config(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run_id, params=params[i:i + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in scalars(kind, values).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def build_trackers(names: Iterable[str], output_dir: Path, train_cfg, config: Dict[str, Any],
                   resume_step: Optional[int]) -> List[Tracker]:
    """The trackers named (jsonl aside: MetricsLogger writes it); run ids kept for resume."""
    runs_file = output_dir / RUNS_FILE
    previous = json.loads(runs_file.read_text()) if resume_step is not None and runs_file.exists() else {}
    trackers: List[Tracker] = []
    ids: Dict[str, str] = {}
    for name in names:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(output_dir, resume_step))
        elif name == "wandb":
            trackers.append(WandbTracker(output_dir, train_cfg.wandb, config, previous.get("wandb")))
            ids["wandb"] = trackers[-1].run_id
        elif name == "mlflow":
            trackers.append(MlflowTracker(output_dir, train_cfg.mlflow, config, previous.get("mlflow")))
            ids["mlflow"] = trackers[-1].run_id
    if ids:
        runs_file.write_text(json.dumps(ids, indent=2))
    return trackers


def _optional(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise ConfigError(f"train.loggers includes {module}, which is not installed: pip install 'deepmim[{extra}]' "
                          f"(or pip install {module}), or remove it from train.loggers") from err
