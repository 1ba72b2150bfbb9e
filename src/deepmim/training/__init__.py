"""The shared training machinery: loop, optimizer, schedule, precision, resume state, logs, torchrun."""
from ..checkpoint import atomic_save, find_resume_checkpoint
from .guard import DivergenceError
from .loop import NonFiniteLossError, Trainer, TrainResult
from .optim import build_adamw, scaled_lr
from .distributed import resolve_device
from .precision import autocast, resolve_precision, use_fused_attention
from .schedule import warmup_cosine_lr

__all__ = ["atomic_save", "find_resume_checkpoint", "DivergenceError", "NonFiniteLossError", "Trainer", "TrainResult", "build_adamw",
           "scaled_lr", "autocast", "resolve_device", "resolve_precision", "use_fused_attention",
           "warmup_cosine_lr"]
