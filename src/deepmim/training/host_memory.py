"""Keep freed host memory for reuse, so a CPU training step does not page-fault its activations in again.

glibc's malloc hands large blocks back to the kernel when they are freed (blocks above the mmap
threshold are unmapped; the top of the heap is trimmed), and every step then faults the same
megabytes in again: measured on a 2-core AVX2 CPU, micro preset at batch 128, 21-43 thousand minor
page faults per step and 60-110 ms of system CPU time per ~830 ms of CPU time, 1-2 ms and 0-300
faults per step once freed blocks are kept (benchmarks/results/). Raising both thresholds (what
GLIBC_TUNABLES=glibc.malloc.mmap_threshold/trim_threshold would do at start-up) keeps them: the
process's resident memory then stays at its peak instead of breathing with each step, which is what
a training process uses anyway.

mallopt is process-wide and has no getter: once tuned, the process stays tuned (tests, notebooks).
`train.reuse_host_memory=false` leaves malloc alone; where another allocator is preloaded (jemalloc,
tcmalloc) or the C library is not glibc, nothing is changed either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Optional

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to 1 GiB come from the heap and stay there; glibc builds that refuse that much take their
# largest accepted mmap threshold (HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit Linux).
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
TRIM_THRESHOLD = 1 << 30

_state: Optional[str] = None  # what was done, once per process


def _glibc() -> Optional[ctypes.CDLL]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def reuse_freed_host_memory(enabled: bool = True) -> str:
    """Raise glibc's mmap and trim thresholds (once per process); returns a phrase for the start-up log."""
    global _state
    if not enabled:
        return "host malloc left as it is (train.reuse_host_memory=false)"
    if _state is not None:
        return _state
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        _state = "host malloc: the preloaded allocator (LD_PRELOAD) as it is"
        return _state
    libc = _glibc()
    if libc is None:
        _state = "host malloc left as it is (not glibc)"
        return _state
    mmap_threshold = next((t for t in MMAP_THRESHOLDS if libc.mallopt(M_MMAP_THRESHOLD, t) == 1), None)
    trimmed = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if mmap_threshold is None or not trimmed:
        _state = "host malloc left as it is (glibc refused the thresholds)"
    else:
        _state = f"host malloc keeps freed blocks up to {mmap_threshold >> 20} MiB for reuse"
    return _state
