"""Regional torch.compile: each Transformer block compiled in place, and when it is worth it.

Compiling the blocks one by one (`nn.Module.compile`) instead of the whole model: blocks of the same
shape share one compiled graph (12 encoder blocks compile once), compile time is a fraction of a
whole-model compile, parameter names do not change (checkpoints, FSDP and DDP see the same module
tree), and what lies outside the blocks (masking, targets, losses) stays eager. Inductor's on-disk
cache (TORCHINDUCTOR_CACHE_DIR, default under /tmp) makes later runs of the same shapes start fast.

`fallback_random=True`: random ops inside a compiled region (drop path, dropout in fine-tuning) then
draw from torch's RNG exactly as eager does, so masks, augmentation and exact resume do not depend on
whether a run compiled.

The rule (`train.compile=auto`): compile when the schedule has at least COMPILE_MIN_STEPS[device]
optimizer steps. Measured on a 2-core CPU with bf16 (benchmarks/results/, one thread, same process,
interleaved): regional compile gains 1.05-1.06x on the micro and tiny presets and nothing measurable
(1.00x) on the ViT-B CLIP step, whose non-matmul work it does not shrink; a cold compile costs 60-130 s
(~10 s with inductor's cache warm). At ~0.3 s per micro step a 5% gain repays 130 s after ~9000 steps,
so on a CPU the rule waits for 20000, and only under bf16: in fp32 on a 2-core AVX2 CPU (same
benchmark, 2 threads) regional compile gained nothing (micro 1.04x vs 1.09x uncompiled, tiny 0.99x vs
1.00x, ViT-B CLIP 0.94x vs 0.99x over the authors'), its fp32 steps being matmul-bound. On a GPU
(not measured yet: benchmarks/gpu_perf.sh measures it) inductor's usual 1.2x+ repays a ~1 min compile
within 2000 steps of ~0.1 s. The demo (640 steps)
and every test stay eager.
"""

from __future__ import annotations

import os
import shutil
from typing import Iterable, Union

from torch import nn

from ..config.loader import ConfigError

COMPILE_MIN_STEPS = {"cpu": 20000, "cuda": 2000}


def should_compile(
    setting: Union[bool, str], planned_steps: int, device_type: str = "cpu", precision: str = "bf16"
) -> bool:
    """train.compile: true | false | auto. auto depends on the schedule's length (epochs x steps per
    epoch, not train.max_steps, so a resumed run makes the same choice as the run it continues), on a
    CPU also on the precision (fp32: never, measured no gain); it stays off where inductor cannot build
    its kernels (no C++ compiler on the PATH)."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ConfigError(f"train.compile must be true, false or auto, got {setting!r}")
    threshold = COMPILE_MIN_STEPS.get(device_type, COMPILE_MIN_STEPS["cpu"])
    if device_type != "cuda" and precision == "fp32":
        return False
    return planned_steps >= threshold and has_cpp_compiler()


def has_cpp_compiler() -> bool:
    """Inductor writes C++ (CPU kernels, and the launchers of Triton's GPU kernels) and calls $CXX or g++/clang++."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    return any(shutil.which(c) for c in candidates)


def compile_blocks(blocks: Iterable[nn.Module]) -> int:
    """torch.compile each of `blocks` (parallel.transformer_blocks of a model) in place; returns how many."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    count = 0
    for block in blocks:
        block.compile()
        count += 1
    return count
