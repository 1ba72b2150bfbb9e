"""What every training loader worker does first."""
from __future__ import annotations


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A training loader worker's init: SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 are the trainer's to handle
    (it finishes its step and saves, training/signals.py). A terminal's Ctrl-C or a scheduler's signal
    reaches the workers too; left to their defaults they would die mid-epoch and take the run with them.
    The trainer still ends them as usual, and they exit by themselves when it is gone."""
    import signal

    for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
