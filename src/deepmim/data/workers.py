"""What every training loader worker does first, and how the main process ends the ones left at exit."""

from __future__ import annotations

import atexit


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A training loader worker's init: SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 are the trainer's to handle
    (it finishes its step and saves, training/signals.py). A terminal's Ctrl-C or a scheduler's signal
    reaches the workers too; left to their defaults they would die mid-epoch and take the run with them.
    The trainer still ends them as usual, and they exit by themselves when it is gone; workers an
    interpreter still holds at exit are ended by `end_workers_left_at_exit`."""
    import signal

    for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def end_workers_left_at_exit(grace_seconds: float = 1.0) -> None:
    """At interpreter exit, multiprocessing ends daemonic children with SIGTERM and then waits for them
    without a limit. Workers that ignore SIGTERM (above) would make that wait endless whenever a loader's
    iterator is still referenced at exit (an exception's traceback holds it): so end them first, SIGTERM,
    then SIGKILL after a grace period. Registered after multiprocessing's own exit hook, so it runs before it."""
    import multiprocessing
    import signal

    children = [child for child in multiprocessing.active_children() if child.daemon]
    if children and hasattr(signal, "SIGCHLD"):  # torch's SIGCHLD handler would report the ended workers as failed
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.terminate()
    for child in children:
        child.join(grace_seconds)
        if child.is_alive():
            child.kill()
            child.join(grace_seconds)


import multiprocessing.util  # noqa: E402, F401  (its exit hook first, so that ours, registered after, runs before it)

atexit.register(end_workers_left_at_exit)
