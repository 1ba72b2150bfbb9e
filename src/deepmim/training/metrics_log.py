"""A run's metrics.jsonl (one JSON object per row, mirrored to the trackers of training/trackers.py),
written by rank 0 only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .console import say

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """One JSON object per line in output_dir/metrics.jsonl, mirrored to the trackers (training/trackers.py:
    TensorBoard, W&B, MLflow). `trackers=None`: TensorBoard alone when `tensorboard` is true."""

    def __init__(
        self,
        output_dir: Path,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: Optional[int] = None,
        trackers: Optional[Callable[[], List[Any]]] = None,
    ):
        self.enabled = enabled
        self.path = output_dir / METRICS_FILE
        self.trackers: List[Any] = []
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if trackers is not None:  # first: a resumed W&B / MLflow run reads the last step they received here
            self.trackers = list(trackers())
        elif tensorboard:
            from .trackers import TensorBoardTracker

            self.trackers = [TensorBoardTracker(output_dir, resume_step)]
        if resume_step is None:
            self.path.write_text("")
        else:
            truncate_after(self.path, resume_step)

    def log(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"type": kind, "step": step, **{k: _plain(v) for k, v in values.items()}}
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as err:  # a full disk: name the file (a failed write does not)
            if err.filename is not None or err.errno is None:
                raise
            raise OSError(err.errno, err.strerror, str(self.path)) from err
        for tracker in self.trackers:
            tracker.log(kind, step, row)

    def log_artifacts(self, output_dir: Path, checkpoint: Optional[Path]) -> None:
        """config.yaml and the final weights to the trackers that keep files (train.log_artifacts=true)."""
        if not self.enabled:
            return
        from .trackers import log_run_artifacts

        logged = log_run_artifacts(self.trackers, output_dir, checkpoint)
        if logged:
            say(f"logged {' and '.join(logged)} as artifacts")

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def truncate_after(path: Path, step: int) -> None:
    """On resume, drop log rows a killed run wrote after its last checkpoint."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
