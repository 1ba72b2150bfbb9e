"""Regional torch.compile: each Transformer block compiled in place, and when it is worth it.

Compiling the blocks one by one (`nn.Module.compile`) instead of the whole model: blocks of the same
shape share one compiled graph (12 encoder blocks compile once), compile time is a fraction of a
whole-model compile, parameter names do not change (checkpoints, FSDP and DDP see the same module
tree), and what lies outside the blocks (masking, targets, losses) stays eager. Inductor's on-disk
cache (TORCHINDUCTOR_CACHE_DIR, default under /tmp) makes later runs of the same shapes start fast.

`fallback_random=True`: random ops inside a compiled region (drop path, dropout in fine-tuning) then
draw from torch's RNG exactly as eager does, so masks, augmentation and exact resume do not depend on
whether a run compiled.

The rule (`train.compile=auto`): compile when the run plans at least COMPILE_MIN_STEPS optimizer steps.
Measured on 2 cores (benchmarks/README.md): a cold compile of the micro preset's blocks takes 60-130 s
and saves ~10% of a step; the CLIP ViT-B step (seconds per step) pays back its compile within a few
hundred steps. 2000 steps repays the slowest measured compile on the smallest model; shorter runs
(the demo: 384 steps, tests) stay eager.
"""
from __future__ import annotations

import os
import shutil
from typing import Iterable, Union

from torch import nn

from ..config.loader import ConfigError

COMPILE_MIN_STEPS = 2000


def should_compile(setting: Union[bool, str], planned_steps: int) -> bool:
    """train.compile: true | false | auto. auto depends on the schedule's length only (epochs x steps per
    epoch, not train.max_steps), so a resumed run makes the same choice as the run it continues; it also
    stays off where inductor cannot build its kernels (no C++ compiler on the PATH)."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ConfigError(f"train.compile must be true, false or auto, got {setting!r}")
    return planned_steps >= COMPILE_MIN_STEPS and has_cpp_compiler()


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
