"""Where numbers go: JSON-lines (+ the trackers of training/loggers.py) and the console, by rank 0 only."""
from __future__ import annotations

import json
import logging
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
        if trackers is not None:  # first: a resumed W&B / MLflow run reads the last step they received here
            self.trackers = list(trackers())
        elif tensorboard:
            from .loggers import TensorBoardTracker
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
        from .loggers import log_run_artifacts
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


LOGGER_NAME = "deepmim"  # every module's logger (logging.getLogger(__name__)) is a child of this one


def say(message: str) -> None:
    """A console message of a run: INFO on the `deepmim` logger (the CLI's --quiet hides it, --verbose adds
    DEBUG); library code calls this or its module's logger, never print."""
    logging.getLogger(LOGGER_NAME).info(message, stacklevel=2)


class ConsoleHandler(logging.Handler):
    """Log records as plain lines on the process's stderr *at the time of the record* (a stage's redirected
    stderr receives its own lines), written through tqdm.write so that a line never breaks a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise from a handler
            self.handleError(record)


def configure_console(level: int = logging.INFO) -> logging.Logger:
    """The `deepmim` logger with one ConsoleHandler at `level` (idempotent). The package installs it at INFO on
    import, as transformers does for its own logger, so runs from Python show what the CLI shows; the CLI sets
    the level from --quiet (WARNING) / --verbose (DEBUG). To route deepmim's records through your own handlers
    instead: `logging.getLogger("deepmim").handlers.clear(); logging.getLogger("deepmim").propagate = True`."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        handler = ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # one line per message even when the application configures the root logger
    logger.setLevel(level)
    return logger
