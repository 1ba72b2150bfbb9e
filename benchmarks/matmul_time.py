"""Time spent inside matrix-multiplication kernels, for the "if only matmuls took time" ceilings.

Each aten call is timed as it runs, by a dispatch mode below autograd and autocast (so the bf16 kernels
themselves are seen); on a CPU every call is synchronous, so the times are the kernels' own. Not
torch.profiler: on the ViT-B step it attributed 12x the time to softmax's backward that timing the call
itself measures. Eager steps on a CPU only (a GPU queues kernels; a compiled graph hides its calls).
"""

from __future__ import annotations

import time
from typing import Callable

from torch.utils._python_dispatch import TorchDispatchMode

MATMUL_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "addbmm"})


class _MatmulTimer(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seconds = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in MATMUL_OPS:
            return func(*args, **(kwargs or {}))
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds += time.perf_counter() - start
        return out


def matmul_seconds(step: Callable[[], object]) -> float:
    """Seconds of one run of `step` spent inside mm/addmm/bmm/baddbmm/addbmm."""
    timer = _MatmulTimer()
    with timer:
        step()
    return timer.seconds
