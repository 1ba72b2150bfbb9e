"""Loader workers ignore stop signals (the trainer handles them); an interpreter that still holds a
loader's iterator at exit must end anyway, instead of waiting forever for workers that ignore SIGTERM."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import signal
    from torch.utils.data import DataLoader
    from deepmim.data.workers import ignore_stop_signals

    held = []
    loader = DataLoader(list(range(100)), batch_size=2, num_workers=1, worker_init_fn=ignore_stop_signals)
    iterator = iter(loader)
    next(iterator)
    held.append(iterator)  # referenced at exit, as an exception's traceback holds it
    worker = iterator._workers[0]
    ignored = int(open(f"/proc/{worker.pid}/status").read().split("SigIgn:")[1].split()[0], 16)
    print("worker ignores SIGTERM:", bool(ignored >> (signal.SIGTERM - 1) & 1), flush=True)
""")


def test_an_interpreter_holding_a_loader_with_signal_ignoring_workers_exits():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "worker ignores SIGTERM: True" in done.stdout
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr[-2000:]
