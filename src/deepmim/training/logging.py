"""Where numbers go: JSON-lines (+ the trackers of training/loggers.py) and the console, by rank 0 only."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """One JSON object per line in output_dir/metrics.jsonl, mirrored to the trackers (training/loggers.py:
    TensorBoard, W&B, MLflow). `trackers=None`: TensorBoard alone when `tensorboard` is true."""

    def __init__(self, output_dir: Path, enabled: bool = True, tensorboard: bool = True,
                 resume_step: Optional[int] = None, trackers: Optional[Callable[[], List[Any]]] = None):
        self.enabled = enabled
        self.path = output_dir / METRICS_FILE
        self.trackers: List[Any] = []
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            truncate_after(self.path, resume_step)
        if trackers is not None:
            self.trackers = list(trackers())
        elif tensorboard:
            from .loggers import TensorBoardTracker
            self.trackers = [TensorBoardTracker(output_dir, resume_step)]

    def log(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"type": kind, "step": step, **{k: _plain(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for tracker in self.trackers:
            tracker.log(kind, step, row)

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


def say(message: str) -> None:
    """Console output that does not break the progress bar."""
    from tqdm.auto import tqdm
    tqdm.write(message, file=sys.stderr)
