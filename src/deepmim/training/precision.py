"""Choosing the device, the precision and the attention kernel."""
from __future__ import annotations

import contextlib
import warnings
from typing import ContextManager

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available; use train.device=cpu")
    return device


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
        warnings.warn("train.precision=bf16 on a CPU without AVX512-BF16/AMX: bf16 matmuls are emulated and "
                      "far slower than fp32 here; use train.precision=auto", stacklevel=2)
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
    """On CPUs, SDPA's bf16 backward is slower than plain matmul attention (PERFORMANCE.md)."""
    if attn_impl != "auto":
        return attn_impl == "fused"
    return not (device.type == "cpu" and precision == "bf16")
