"""A study's unit of work and its record: run once, skip when done, resume when killed, refuse when changed.

Every stage writes `stages/<name>.json` in its arm/seed folder, atomically: first `status: running` with
the hash of its inputs (before any work, so a folder without a record was not made by the study), then
`status: done` with its result. A rerun skips done stages with the same hash, resumes running ones
(stages that are ordinary training runs continue from their last checkpoint with train.resume=auto) and,
for a stage whose inputs changed, stops with what changed (on_change=refuse) or deletes it and runs it
again (on_change=rerun). Inputs include the hash of the stage a stage reads from, so a change reaches
everything downstream of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ...checkpoint import file_mode
from ...config.loader import ConfigError, flatten
from ...training.jsonfile import dumps

ON_CHANGE = ("refuse", "rerun")
COSMETIC_KEYS = (
    "progress",
    "tensorboard",
    "plots",
    "num_workers",
    "log_every_steps",
    "output_dir",
    "resume",
    "overwrite",
    "divergence_factor",
    "reuse_host_memory",
)


class StudyChangedError(ConfigError):
    """A finished or started stage was made from other inputs than the study asks for now."""


@dataclass
class Stage:
    """`run()` -> a JSON-able result. `folder`: an ordinary run folder that `run` resumes when killed."""

    name: str
    inputs: Dict[str, Any]
    run: Callable[[], Dict[str, Any]]
    folder: Optional[Path] = None


def strip_cosmetic(config: Dict[str, Any]) -> Dict[str, Any]:
    """A run config without the keys that do not change its numbers (progress bars, logs, paths, workers)."""
    return {k: strip_cosmetic(v) if isinstance(v, dict) else v for k, v in config.items() if k not in COSMETIC_KEYS}


def inputs_hash(inputs: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json(path: Path, obj: Any) -> None:
    """Atomically: a temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dumps(obj, indent=1, default=str))
            f.flush()
            os.fchmod(f.fileno(), file_mode())  # mkstemp's 0600 -> what the umask gives
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else None


def describe_change(old: Dict[str, Any], new: Dict[str, Any], limit: int = 8) -> str:
    """'train.epochs: 4 -> 6; ...' for the keys that differ."""
    a, b = flatten(json.loads(json.dumps(old, default=str))), flatten(json.loads(json.dumps(new, default=str)))
    diffs = [
        f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
    more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more if diffs else "(its upstream stage changed)"


class StageRunner:
    """Runs stages with records; `log` gets one readable line per stage start, end or skip."""

    def __init__(self, on_change: str, log: Callable[[str], None]):
        if on_change not in ON_CHANGE:
            raise ConfigError(f"on_change must be one of {ON_CHANGE}, got {on_change!r}")
        self.on_change, self.log = on_change, log
        self.ran: List[str] = []  # labels of the stages this process computed (not skipped)

    def run(self, stage: Stage, record_path: Path, label: str) -> Dict[str, Any]:
        """The stage's result (and its record's bookkeeping: hash, seconds, attempts). What the stage itself
        prints (resolved configs, progress bars, warnings) goes to logs/<stage>.log beside the records."""
        digest = inputs_hash(stage.inputs)
        record = self._record_to_continue(stage, record_path, label, digest)
        if record is not None and record["status"] == "done":
            self.log(f"skip   {label} (finished earlier, {record['seconds']:.1f} s)")
            return {**record["result"], "seconds": record["seconds"]}
        attempts = list(record["attempts"]) if record else []
        if attempts and "useful_s" not in attempts[-1]:  # the killed attempt: measured now, before we save again
            attempts[-1]["useful_s"] = self._useful_seconds(attempts[-1], stage)
        attempts.append({"start": time.time()})
        base = {"stage": stage.name, "hash": digest, "inputs": stage.inputs, "attempts": attempts}
        write_json(record_path, {**base, "status": "running"})
        log_path = record_path.parent.parent / "logs" / f"{stage.name}.log"
        self.log(
            f"start  {label}"
            + (f" (resuming, attempt {len(attempts)})" if len(attempts) > 1 else "")
            + (f"; log: {log_path}" if stage.folder is not None else "")
        )
        t0 = time.perf_counter()
        result = self._execute(stage, log_path, f"{label}, attempt {len(attempts)}")
        seconds = time.perf_counter() - t0 + sum(a.get("useful_s", 0.0) for a in attempts)
        write_json(record_path, {**base, "status": "done", "seconds": seconds, "result": result})
        self.ran.append(label)
        self.log(f"done   {label} in {seconds:.1f} s" + _summary(result))
        return {**result, "seconds": seconds}

    def _record_to_continue(self, stage: Stage, record_path: Path, label: str, digest: str) -> Optional[Dict[str, Any]]:
        """The stage's record if it was made from the same inputs; otherwise refuse, or (on_change=rerun)
        delete the stage's folder and start over."""
        record = read_json(record_path)
        if record is not None and record["hash"] != digest:
            change = describe_change(record.get("inputs", {}), stage.inputs)
            if self.on_change == "refuse":
                raise StudyChangedError(
                    f"{label} in {record_path.parent.parent} was {'run' if record['status'] == 'done' else 'started'}"
                    f" with other inputs than the study asks for now ({change}). Its results would mix two "
                    f"configurations: use another output_dir, or pass on_change=rerun to delete and recompute the "
                    f"changed stages (and what depends on them)"
                )
            self.log(f"rerun  {label}: inputs changed ({change})")
            if stage.folder is not None and stage.folder.exists():
                shutil.rmtree(stage.folder)
            return None
        if record is None and stage.folder is not None and stage.folder.exists() and any(stage.folder.iterdir()):
            raise ConfigError(
                f"{stage.folder} exists but the study has no record of starting it: it was not "
                f"made by this study; move it away or use another output_dir"
            )
        return record

    def _execute(self, stage: Stage, log_path: Path, title: str) -> Dict[str, Any]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            with open(log_path, "a") as log_file, contextlib.redirect_stderr(log_file):
                log_file.write(f"=== {title}, {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
                log_file.flush()
                try:
                    return stage.run()
                except BaseException as err:
                    log_file.write(f"=== failed: {type(err).__name__}: {err}\n")
                    raise
        except BaseException as err:  # said on the console, out of the redirection
            self.log(
                f"failed {title} after {time.perf_counter() - t0:.1f} s ({type(err).__name__}); its output: {log_path}"
            )
            raise

    @staticmethod
    def _useful_seconds(attempt: Dict[str, Any], stage: Stage) -> float:
        """Time a killed attempt of a training run spent on work its checkpoint kept (start -> last save)."""
        if stage.folder is None:
            return 0.0
        last = stage.folder / "checkpoint-last.pt"
        if not last.is_file():
            return 0.0
        return max(0.0, last.stat().st_mtime - attempt["start"])


def _summary(result: Dict[str, Any]) -> str:
    line = result.get("summary")
    return f": {line}" if line else ""
