"""An output folder belongs to one run: what `prepare_output_dir` (tasks/base.py) checks and takes.

- `check_output_dir` (read only, before anything is built): the folder can be a folder and written
  to, no live run holds it, and a fresh run does not land on another run's checkpoints;
- `RunLock`: an exclusive lock on the folder itself and on output_dir/.deepmim.lock (flock, so the
  kernel releases it when the process ends, however it ends: a lock left by a crash is stale and taken
  over; forked children such as DataLoader workers close their copy, so they never keep it past the
  run); the file names the holder (pid, host, command) for the message the second run gets, and the
  lock on the folder holds even when someone deletes that file;
- `claim_output_dir` (under the lock): the same checks again, then with train.overwrite=true the old
  run's files are moved to output_dir/replaced-N/ (nothing is deleted), and the temp files of an
  interrupted checkpoint write are removed.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import List, Optional

from ..checkpoint import TEMP_FILES, remove_temp_files, run_checkpoints
from ..config.loader import ConfigError

LOCK_FILE = ".deepmim.lock"
# What a training run writes in its folder: what train.overwrite=true moves aside (anything else stays).
RUN_FILES = (
    "checkpoint-*.pt",
    "config.yaml",
    "metrics.jsonl",
    "tensorboard",
    "loss.png",
    "reconstruction.png",
    "eval.json",
    TEMP_FILES,
)


class OutputDirError(ConfigError):
    """train.output_dir cannot be used by this run (the message says why and what to do)."""


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(out: Path) -> None:
    """A folder (or a path where one can be made) that this process may write in."""
    if out.exists() and not out.is_dir():
        raise OutputDirError(
            f"train.output_dir '{out}' is a file, not a folder: set train.output_dir to a folder "
            f"(it is created when missing)"
        )
    existing = _nearest_existing(out.absolute())
    if not existing.is_dir():
        raise OutputDirError(
            f"train.output_dir '{out}' cannot be created: '{existing}' is a file, not a folder; "
            f"set train.output_dir to a path under a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = (
            "train.output_dir" if existing == out.absolute() else f"'{existing}', where train.output_dir would be made,"
        )
        raise OutputDirError(
            f"cannot write in train.output_dir '{out}': {what} is read-only for this user; set "
            f"train.output_dir to a folder you can write in"
        )


def run_files(out: Path) -> List[Path]:
    """The files of a run in `out` (RUN_FILES but the temp files of a write, which a start removes),
    checkpoints first."""
    if not out.is_dir():
        return []
    others = sorted({p for pattern in RUN_FILES if pattern != TEMP_FILES for p in out.glob(pattern)})
    found = run_checkpoints(out)
    return found + [p for p in others if p not in found]


def refuse_other_run(out: Path, resume: Optional[str], overwrite: bool) -> None:
    """A fresh run (no train.resume) must not land on another run's files (checkpoints, config.yaml,
    metrics.jsonl, ...), nor a run resumed from a checkpoint elsewhere write over this folder's."""
    if overwrite:
        return
    found = run_checkpoints(out) if resume is not None else run_files(out)
    if not found:
        return
    names = ", ".join(p.name for p in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    if resume is None:
        raise OutputDirError(
            f"train.output_dir '{out}' already holds a run ({names}); a fresh run would write over it. Continue "
            f"that run with train.resume=auto, start afresh with train.overwrite=true (the old files are moved "
            f"to {out}/replaced-N/, not deleted), or set train.output_dir to another folder"
        )
    if resume != "auto" and Path(resume).absolute().parent != out.absolute():
        raise OutputDirError(
            f"train.output_dir '{out}' holds another run ({names}) than train.resume={resume}; resuming here would "
            f"write over it. Set train.output_dir to the resumed run's folder or to a new one, or pass "
            f"train.overwrite=true to move this folder's run aside first"
        )


def check_output_dir(out: Path, resume: Optional[str], overwrite: bool, check_lock: bool = True) -> None:
    """Everything that can be checked without writing: called before the data and the model are built
    (`check_lock`: by the process that will take the lock; under torchrun the others would see its lock)."""
    check_writable(out)
    if check_lock and out.is_dir():
        holder = RunLock.holder(out)
        if holder is not None:
            raise busy(out, holder)
    refuse_other_run(out, resume, overwrite)


def busy(out: Path, holder: str) -> OutputDirError:
    return OutputDirError(
        f"train.output_dir '{out}' is in use by another run ({holder}); two runs in one folder would write over "
        f"each other's checkpoints and logs. Wait for it to end (or stop it), or set train.output_dir to another "
        f"folder"
    )


_HELD: set = set()  # descriptors of the locks this process holds: closed in forked children


def _close_in_child() -> None:
    for fd in list(_HELD):  # close only: an unlock here would release the parent's lock
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _lock_folder(out: Path) -> int:
    """An exclusive flock on the folder itself (a descriptor of the directory; -1 where the file system
    has no locks on directories): deleting .deepmim.lock cannot undo it."""
    try:
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise busy(out, RunLock.holder(out) or "a process that holds its lock") from None
        return -1
    _HELD.add(fd)
    return fd


def _is_locked(path: Path, flags: int = os.O_RDONLY) -> bool:
    """Whether some process holds an exclusive flock on `path` (a file or a folder)."""
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class RunLock:
    """An exclusive, non-blocking flock on output_dir and on output_dir/.deepmim.lock, held while the run
    lives."""

    def __init__(self, path: Path, fd: int, folder_fd: int = -1):
        self.path, self.fd, self.folder_fd = path, fd, folder_fd

    @classmethod
    def acquire(cls, out: Path) -> "RunLock":
        folder_fd = _lock_folder(out)
        try:
            return cls._acquire_file(out, folder_fd)
        except BaseException:
            if folder_fd >= 0:
                _HELD.discard(folder_fd)
                os.close(folder_fd)
            raise

    @classmethod
    def _acquire_file(cls, out: Path, folder_fd: int) -> "RunLock":
        path = out / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise busy(out, cls.holder(out) or "a process that holds its lock") from None
                raise OutputDirError(
                    f"cannot lock train.output_dir '{out}' ({err.strerror}): this file system "
                    f"does not support locks; use a local or lock-capable folder"
                ) from err
            try:  # the holder before us may have removed the file between our open and our lock: retry
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_holder_record()).encode())
            os.fsync(fd)
        except OSError as err:  # a full disk: name the file (os.write does not)
            os.close(fd)
            raise OSError(err.errno, err.strerror, str(path)) from err
        _HELD.add(fd)
        return cls(path, fd, folder_fd)

    @staticmethod
    def holder(out: Path) -> Optional[str]:
        """Who holds the folder's lock, in words; None when nobody does (no lock, or a stale file)."""
        path = out / LOCK_FILE
        if not _is_locked(path) and not _is_locked(out, os.O_RDONLY | os.O_DIRECTORY):
            return None  # nobody holds it (a file left by a run that was killed is stale)
        try:
            with open(path, "rb") as f:
                record = json.loads(f.read(65536).decode() or "{}")
        except FileNotFoundError:
            return f"a process whose {LOCK_FILE} was deleted; 'fuser -v {out}' or 'lsof +D {out}' shows it"
        except (OSError, ValueError):
            record = {}
        return (
            f"pid {record.get('pid', '?')} on {record.get('host', '?')}, started {record.get('started', '?')}: "
            f"{record.get('command', '?')}"
        )

    def release(self) -> None:
        """Remove the file while still holding it (a waiting run then retries on a fresh file), unlock."""
        if self.fd < 0:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        for fd in (self.fd, self.folder_fd):
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_UN)
                _HELD.discard(fd)
                os.close(fd)
        self.fd = self.folder_fd = -1


def _holder_record() -> dict:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "-m", "-c"):  # python -m deepmim ...
        program = "deepmim"
    command = " ".join([program] + sys.argv[1:])
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command if len(command) <= 160 else command[:157] + "...",
    }


def move_aside(out: Path) -> Optional[Path]:
    """train.overwrite=true: the old run's files into out/replaced-N/ (N: the first free number)."""
    entries: List[Path] = sorted({p for pattern in RUN_FILES for p in out.glob(pattern)})
    if not entries:
        return None
    n = 1
    while (out / f"replaced-{n}").exists():
        n += 1
    target = out / f"replaced-{n}"
    target.mkdir()
    for entry in entries:
        shutil.move(str(entry), str(target / entry.name))
    return target


def claim_output_dir(out: Path, resume: Optional[str], overwrite: bool) -> List[str]:
    """Under the lock: check again (another run may have written meanwhile), then move an old run aside
    (train.overwrite=true) and remove stale temp files. Returns what it did, for the console."""
    refuse_other_run(out, resume, overwrite)
    notes = []
    if overwrite:
        moved = move_aside(out)
        if moved is not None:
            notes.append(f"train.overwrite=true: moved the previous run's files to {moved}/")
    removed = remove_temp_files(out)
    if removed:
        notes.append(
            f"removed {len(removed)} temp file(s) an interrupted checkpoint write left in {out}: "
            + ", ".join(p.name for p in removed)
        )
    return notes
