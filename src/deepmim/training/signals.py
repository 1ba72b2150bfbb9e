"""Stop signals: finish the step, save, leave with a code that says why.

Schedulers ask a job to stop before they kill it: SLURM sends SIGTERM at preemption and at the time
limit (or a chosen signal ahead of it: `sbatch --signal=USR1@120`), Kubernetes sends SIGTERM on
eviction, a person presses Ctrl-C (SIGINT). While `Trainer.fit` runs, `StopSignals` turns each of
these into a request instead of an exception: the current optimizer step finishes, every process
agrees at the step's end (the loop all-reduces the request), a checkpoint is written through the
divergence guard's rules, and the command exits with `exit_code(signal)`:

    SIGINT 130, SIGTERM 143, SIGUSR1 138, SIGUSR2 140   (128 + the signal's number, as a shell reports it)

A repeated signal while the run is finishing its step or writing the checkpoint is noted and
ignored (checkpoint writes are atomic anyway: a SIGKILL leaves the previous file whole). Outside
`fit` the handlers the process had before are in place (Ctrl-C during start-up raises
KeyboardInterrupt as usual). Under SLURM, `train.requeue=true` puts the job back in the queue after
the save (`scontrol requeue $SLURM_JOB_ID`); the requeued job resumes from the checkpoint
(`requested_resume` reads SLURM_RESTART_COUNT).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from types import FrameType
from typing import Dict, Iterable, List, Optional

STOP_SIGNALS = ("SIGTERM", "SIGINT")  # always handled; train.save_signal adds one (SIGUSR1 by default)


class Stopped(Exception):
    """The run stopped on a signal after writing a resumable checkpoint (or finding nothing to save)."""

    def __init__(self, signum: int, step: int, checkpoint, requeued: Optional[str] = None):
        self.signum, self.step, self.checkpoint, self.requeued = signum, step, checkpoint, requeued
        name = signal_name(signum)
        saved = f"checkpoint {checkpoint} (step {step})" if checkpoint else "no checkpoint (no step was trained)"
        how = requeued or "continue with the same command and train.resume=auto"
        super().__init__(f"stopped by {name} after step {step}: {saved}; {how}")

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


def exit_code(signum: int) -> int:
    """128 + the signal's number: what a shell reports for a process a signal ended (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def parse_signal(name: str) -> signal.Signals:
    """'SIGUSR1', 'USR1' or '10' -> signal.SIGUSR1; ValueError naming the choices otherwise."""
    text = str(name).strip().upper()
    if text.isdigit():
        return signal.Signals(int(text))
    text = text if text.startswith("SIG") else "SIG" + text
    if not hasattr(signal, text) or text in ("SIGKILL", "SIGSTOP"):
        raise ValueError(
            f"train.save_signal must name a signal a process can catch, such as SIGUSR1, SIGUSR2 "
            f"or SIGTERM, got {name!r}"
        )
    return getattr(signal, text)


def stop_signals(save_signal: Optional[str]) -> List[signal.Signals]:
    """The signals a run handles: SIGTERM, SIGINT and train.save_signal (none when null or empty)."""
    wanted = [getattr(signal, s) for s in STOP_SIGNALS]
    if save_signal:
        extra = parse_signal(save_signal)
        if extra not in wanted:
            wanted.append(extra)
    return wanted


class StopSignals:
    """Record the first stop signal instead of dying on it; a context manager that restores the
    previous handlers on the way out. In a thread other than the main one (where Python cannot set
    handlers) it records nothing and the signals keep their usual effect."""

    def __init__(self, signums: Iterable[int]):
        self.signums = list(signums)
        self.received: Optional[int] = None
        self.repeats = 0
        self.previous: Dict[int, object] = {}
        self.pid = os.getpid()

    def __enter__(self) -> "StopSignals":
        self.pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if os.getpid() != self.pid:  # a DataLoader worker forked while training: it carries on, the trainer
            return  # (which received the signal too, from the same terminal or scheduler) stops it
        if self.received is None:
            self.received = signum
            note = (
                f"deepmim: {signal_name(signum)} received: finishing this step, then saving a checkpoint "
                f"(a repeated signal is ignored until the save is done)\n"
            )
        else:
            self.repeats += 1
            note = f"deepmim: {signal_name(signum)} ignored: already stopping, the checkpoint is being written\n"
        if os.environ.get("RANK", "0") != "0":  # one note per run: rank 0's (every rank stops all the same)
            return
        try:
            os.write(2, note.encode())  # os.write: safe inside a handler, unlike print
        except OSError:
            pass


def requeue_slurm_job(enabled: bool) -> Optional[str]:
    """`scontrol requeue $SLURM_JOB_ID` when `enabled` and the run is a SLURM job; the sentence for the
    stop message, or None when nothing was asked. A failed requeue is reported, never raised: the
    checkpoint is already written."""
    job = os.environ.get("SLURM_JOB_ID")
    if not enabled or not job:
        return "train.requeue=true but SLURM_JOB_ID is not set: not requeued" if enabled else None
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return f"scontrol was not found on PATH: SLURM job {job} was not requeued; resubmit it"
    try:
        done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"'scontrol requeue {job}' failed ({err}): resubmit the job"
    if done.returncode != 0:
        return f"'scontrol requeue {job}' failed: {done.stderr.strip() or done.returncode}; resubmit the job"
    return f"SLURM job {job} requeued: it resumes from this checkpoint"
