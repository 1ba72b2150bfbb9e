"""Experiment trackers the logs are mirrored to: `train.loggers=[jsonl,tensorboard,wandb,mlflow]`.

metrics.jsonl is always written (loss.png, `deepmim analyze`, the study and resume read it); the others
get the same rows, as `<type>/<key>` scalars at the optimizer step (`train/loss`, `epoch/loss_block6`,
`eval/top1`), from rank 0 only. wandb and mlflow are optional extras (`pip install deepmim[wandb]`,
`deepmim[mlflow]`) imported only when asked for.

Resume: the trackers' run ids are kept in output_dir/trackers.json, so `train.resume=auto` continues
the same W&B run and MLflow run. Rows a killed run logged after its last checkpoint are logged again
by the resumed run: metrics.jsonl and TensorBoard (purge_step) drop the stale ones; W&B and MLflow, which
cannot drop points, are sent only the steps after the last one they received (the last step of
metrics.jsonl before the resume; exact resume recomputes the same numbers there), so no step is logged twice.

What else they get: the run's config (W&B config, MLflow params without None values, TensorBoard hparams and
the config.yaml text), the epoch as a metric (`train/epoch`, next to the `<type>/<key>` scalars), and with
`train.log_artifacts=true` config.yaml and the final weights (safetensors) as artifacts (W&B, MLflow).
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
METRICS_FILE = "metrics.jsonl"
_SKIPPED = ("epoch", "step")  # not `<type>/<key>`: the x axis, and the epoch (logged once, as EPOCH_METRIC)
EPOCH_METRIC = "train/epoch"
HPARAM_METRICS = ("train/loss", "epoch/loss", "eval/top1", "eval/loss", "eval/miou")  # TensorBoard's hparams table


def resolve_loggers(names: Iterable[str], tensorboard: bool = True) -> List[str]:
    """train.loggers checked; `train.tensorboard=false` (the older switch) removes tensorboard."""
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ConfigError(f"train.loggers: unknown logger(s) {', '.join(unknown)}; choose from {', '.join(LOGGERS)}")
    return [n for n in names if tensorboard or n != "tensorboard"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def scalars(kind: str, values: Dict[str, Any]) -> Dict[str, float]:
    """The plottable numbers of a row, named `<type>/<key>`, and the row's epoch (1-based) as `train/epoch`
    whatever the row (a tracked metric, the x axis W&B and MLflow can plot against; one name, as the HF Trainer's,
    and not a bare `epoch`, which MLflow's file store cannot hold beside the `epoch/...` metrics)."""
    out = {f"{kind}/{k}": float(v) for k, v in values.items() if _is_number(v) and k not in _SKIPPED}
    if _is_number(values.get("epoch")):
        out[EPOCH_METRIC] = float(values["epoch"])
    return out


def flat_config(config: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    """{'train': {'epochs': 3, 'resume': None}} -> {'train.epochs': '3'} (MLflow params, TensorBoard hparams):
    strings as they are, other values in JSON (true, [0.9, 0.95]); None is left out, as MLflow has no null
    (the string 'None' would read as a value)."""
    out: Dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = (value if isinstance(value, str) else json.dumps(value))[:500]
    return out


def last_logged_step(output_dir: Path) -> Optional[int]:
    """The last step metrics.jsonl holds (every row went to the trackers too): before a resume truncates it,
    the last step W&B and MLflow received."""
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return None
    steps = [json.loads(line).get("step", -1) for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=None)


class Tracker:
    """One destination of the logged rows."""

    def log(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        raise NotImplementedError

    def log_artifact(self, path: Path, kind: str) -> None:
        """Keep a file with the run (`kind`: config | model); trackers without artifacts ignore it."""

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Scalars in output_dir/tensorboard; a fresh run also writes its config: as text (the `config` tab) and as
    hparams (the HParams tab, one row per run, against HPARAM_METRICS)."""

    def __init__(self, output_dir: Path, resume_step: Optional[int], config: Optional[Dict[str, Any]] = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=resume_step)
        if config and resume_step is None:
            self.write_config(config)

    def write_config(self, config: Dict[str, Any]) -> None:
        import yaml
        from torch.utils.tensorboard.summary import hparams

        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)  # indented: markdown code
        params = {k: json.loads(v) if _is_number_text(v) else v for k, v in flat_config(config).items()}
        experiment, start, end = hparams(params, {name: 0.0 for name in HPARAM_METRICS})
        for summary in (experiment, start, end):  # into this run's own file (add_hparams would start another run)
            self.writer.file_writer.add_summary(summary)

    def log(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        for key, value in scalars(kind, values).items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


def _is_number_text(text: str) -> bool:
    try:
        return _is_number(json.loads(text))
    except ValueError:
        return False


class WandbTracker(Tracker):
    """A W&B run in output_dir/wandb (train.wandb.mode=offline: nothing leaves the machine; `wandb sync`).
    `skip_through`: on resume, the last step the run received (those rows are not sent again)."""

    def __init__(
        self, output_dir: Path, cfg, config: Dict[str, Any], run_id: Optional[str], skip_through: Optional[int] = None
    ):
        self.wandb = wandb = _optional("wandb", "wandb")
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.name or output_dir.name,
            mode=cfg.mode,
            tags=list(cfg.tags) or None,
            dir=str(output_dir),
            config=config,
            id=run_id,
            resume="allow" if run_id else None,
        )
        self.run_id = self.run.id
        self.skip_through = skip_through if run_id else None

    def log(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        if self.skip_through is not None and step <= self.skip_through:
            return
        self.run.log(scalars(kind, values), step=step)

    def log_artifact(self, path: Path, kind: str) -> None:
        artifact = self.wandb.Artifact(f"{self.run.name or self.run_id}-{kind}".replace("/", "-"), type=kind)
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    """An MLflow run through MlflowClient. train.mlflow.tracking_uri unset: $MLFLOW_TRACKING_URI, else a
    file store in output_dir/mlruns (`mlflow ui --backend-store-uri runs/x/mlruns`)."""

    def __init__(
        self, output_dir: Path, cfg, config: Dict[str, Any], run_id: Optional[str], skip_through: Optional[int] = None
    ):
        _optional("mlflow", "mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        resumed = run_id is not None
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
                self.client.log_batch(run_id, params=params[i : i + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.skip_through = skip_through if resumed else None

    def log(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        from mlflow.entities import Metric

        if self.skip_through is not None and step <= self.skip_through:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in scalars(kind, values).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_artifact(self, path: Path, kind: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=kind)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def build_trackers(
    names: Iterable[str], output_dir: Path, train_cfg, config: Dict[str, Any], resume_step: Optional[int]
) -> List[Tracker]:
    """The trackers named (jsonl aside: MetricsLogger writes it); run ids kept for resume."""
    runs_file = output_dir / RUNS_FILE
    previous = json.loads(runs_file.read_text()) if resume_step is not None and runs_file.exists() else {}
    received = last_logged_step(output_dir) if resume_step is not None else None  # before MetricsLogger truncates
    trackers: List[Tracker] = []
    ids: Dict[str, str] = {}
    for name in names:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(output_dir, resume_step, config))
        elif name == "wandb":
            trackers.append(WandbTracker(output_dir, train_cfg.wandb, config, previous.get("wandb"), received))
            ids["wandb"] = trackers[-1].run_id
        elif name == "mlflow":
            trackers.append(MlflowTracker(output_dir, train_cfg.mlflow, config, previous.get("mlflow"), received))
            ids["mlflow"] = trackers[-1].run_id
    if ids:
        runs_file.write_text(json.dumps(ids, indent=2))
    return trackers


def log_run_artifacts(trackers: List[Tracker], output_dir: Path, checkpoint: Optional[Path]) -> List[str]:
    """train.log_artifacts=true, at the end of a finished run: config.yaml and the final weights (the model of
    `checkpoint` as safetensors, without the optimizer state) to every tracker that keeps files. Returns what
    was logged, for the console."""
    import tempfile

    from ..checkpoint import read_checkpoint, save_weights

    logged = []
    config = Path(output_dir) / "config.yaml"
    if config.is_file():
        for tracker in trackers:
            tracker.log_artifact(config, "config")
        logged.append(str(config))
    if checkpoint is not None and Path(checkpoint).is_file():
        ckpt = read_checkpoint(checkpoint)
        with tempfile.TemporaryDirectory() as tmp:
            weights = save_weights(
                ckpt.model_state,
                Path(tmp) / f"{ckpt.task or 'model'}-weights.safetensors",
                {"format": "pt", "step": str(ckpt.step)},
            )
            for tracker in trackers:
                tracker.log_artifact(weights, "model")
        logged.append(f"the weights of {checkpoint}")
    return logged


def _optional(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise ConfigError(
            f"train.loggers includes {module}, which is not installed: pip install 'deepmim[{extra}]' "
            f"(or pip install {module}), or remove it from train.loggers"
        ) from err
