"""The shared training machinery: loop, optimizer, schedule, precision, resume state, logs, torchrun.

The names below are imported on first use (PEP 562), so the package root can set up the console logger
(training/console.py, standard library only) without loading torch."""

import importlib

_WHERE = {
    "DivergenceError": ".guard",
    "Trainer": ".loop",
    "TrainResult": ".loop",
    "build_adamw": ".optim",
    "scaled_lr": ".optim",
    "resolve_device": ".distributed",
    "autocast": ".precision",
    "resolve_precision": ".precision",
    "use_fused_attention": ".precision",
    "warmup_cosine_lr": ".schedule",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
