"""Choosing the precision and the attention kernel (the device: training/distributed.py)."""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Callable, ContextManager, Dict, Tuple

import torch
import torch.distributed as dist

from .distributed import is_distributed


def cpu_supports_bf16() -> bool:
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_precision(name: str, device: torch.device) -> str:
    """auto: bf16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or
    AMX), fp16 on older CUDA GPUs, fp32 otherwise (e.g. AVX2-only CPUs, where bf16 is emulated)."""
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"train.precision must be auto, fp32, bf16 or fp16, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs CUDA; on a CPU use bf16 or fp32")
    if name == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        warnings.warn(
            "train.precision=bf16 on a CPU without AVX512-BF16/AMX: bf16 matmuls are emulated and "
            "far slower than fp32 here; use train.precision=auto",
            stacklevel=2,
        )
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> ContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_fused_attention(attn_impl: str, device: torch.device, precision: str) -> bool:
    """auto: the rule our measurements gave (benchmarks/README.md, PERFORMANCE.md): SDPA everywhere except
    bf16 on CPUs, where its backward is slower than plain matmul attention. ('measure' is resolved by
    `fastest_attention` before this is called.)"""
    if attn_impl not in ("auto", "fused", "math"):
        raise ValueError(f"attention must be auto, fused, math or measure, got {attn_impl!r}")
    if attn_impl != "auto":
        return attn_impl == "fused"
    return not (device.type == "cpu" and precision == "bf16")


def fastest_attention(
    step: Callable[[], None], set_fused: Callable[[bool], None], device: torch.device, reps: int = 2
) -> Tuple[bool, Dict[str, float]]:
    """Time `step` (a forward + backward at the run's shapes) with SDPA and with plain attention,
    alternating after one warm-up each; (SDPA is faster, {kernel: best seconds}). Under
    torch.distributed every process takes rank 0's times, so all choose the same kernel."""
    best = {"fused": float("inf"), "math": float("inf")}
    for i in range(reps + 1):
        for name in ("fused", "math"):
            set_fused(name == "fused")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i > 0:  # the first round warms up allocators and kernel caches
                best[name] = min(best[name], time.perf_counter() - t0)
    if is_distributed():
        times = torch.tensor([best["fused"], best["math"]], device=device if device.type == "cuda" else "cpu")
        dist.broadcast(times, src=0)
        best = {"fused": times[0].item(), "math": times[1].item()}
    fused = best["fused"] <= best["math"]
    set_fused(fused)
    return fused, best
